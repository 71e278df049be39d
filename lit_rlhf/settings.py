"""Typed, grouped settings: the configuration surface of the stage modules.

A group is a frozen dataclass whose ``Attributes:`` docstring is its CLI help (``lit-rlhf fit --help``
shows ``--model.init_args.optimizer.learning_rate`` with its text) and whose ``__post_init__`` checks every
field's range, so a bad value is refused in one line that names the option before any model loads::

    model:
      class_path: SFTModule
      init_args:
        optimizer: {learning_rate: 2.0e-5, warmup_steps: 10}

Modules keep the typed groups as attributes and read them from there; their hyperparameters (logged, and
stored in checkpoints) hold the groups as plain dicts, so a checkpoint loads with ``torch.load``'s
``weights_only`` and ``load_from_checkpoint`` rebuilds the groups with :func:`settings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from lit_rlhf.errors import ConfigError, check_option

T = TypeVar("T")


def settings(cls: type[T], value: Optional[T | Mapping[str, Any]], default: Optional[T] = None) -> T:
    """``value`` as a ``cls`` instance: an instance as it is; a mapping (YAML, a checkpoint's hparams) as its fields
    over ``default``'s (or the class defaults), unknown keys refused in one line; None as ``default`` (or ``cls()``).
    A stage whose defaults differ from the class's (PPO's optimizer) passes them as ``default``."""
    default = default if default is not None else cls()
    if value is None:
        return default
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: unknown option of {cls.__name__}; its options: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(default, **value)
    raise ConfigError(f"expected {cls.__name__} or a mapping of its options, got {type(value).__name__}")


def as_hparams(value: Any) -> Any:
    """A settings group as a plain dict (for ``save_hyperparameters``); anything else unchanged."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and its learning-rate schedule: linear warm-up from ``warmup_start`` x the peak over ``warmup_steps``
    scheduler steps, then cosine decay to ``min_lr_ratio`` x the peak at the end of training (``min_lr_ratio: 1``
    keeps the peak: a constant schedule). SFT and RM step the schedule per optimizer step; PPO once per rollout.

    Attributes:
        learning_rate: Peak learning rate (paper: SFT 9.65e-6, RM 9e-6, PPO 1e-5 range).
        betas: Adam betas (paper: 0.9, 0.95).
        weight_decay: AdamW weight decay.
        warmup_steps: Scheduler steps of linear warm-up (paper: none for SFT and RM, 10 rollouts for PPO).
        warmup_start: The warm-up starts at this fraction of the peak (paper PPO: 0.1).
        min_lr_ratio: The cosine decay ends at this fraction of the peak (paper: 0.1 for SFT and RM; 1 is constant,
            as PPO's schedule is).
    """

    learning_rate: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_start: float = 0.0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # a YAML or checkpoint list, as the type says
        check_option("optimizer.learning_rate", self.learning_rate, min=0, min_open=True)
        for i, beta in enumerate(self.betas):
            check_option(f"optimizer.betas[{i}]", beta, min=0, max=1, max_open=True)
        check_option("optimizer.weight_decay", self.weight_decay, min=0)
        check_option("optimizer.warmup_steps", self.warmup_steps, min=0, integer=True)
        check_option("optimizer.warmup_start", self.warmup_start, min=0, max=1)
        check_option("optimizer.min_lr_ratio", self.min_lr_ratio, min=0, max=1)


#: Flat constructor keys that moved into a settings group: old key -> new key (relative to ``init_args``). The CLI
#: answers an old key with one line naming the new one. Each stage that moves a key adds it here.
MOVED_KEYS: dict[str, str] = {
    "learning_rate": "optimizer.learning_rate",
    "betas": "optimizer.betas",
    "weight_decay": "optimizer.weight_decay",
    "warmup_steps": "optimizer.warmup_steps",
    "min_lr_ratio": "optimizer.min_lr_ratio",
    # PPOModule (lit_rlhf.modules.ppo_settings)
    "rollout_batch_size": "batch.rollout_batch_size",
    "samples_per_prompt": "batch.samples_per_prompt",
    "minibatch_size": "batch.minibatch_size",
    "micro_batch_size": "batch.micro_batch_size",
    "ppo_epochs": "batch.ppo_epochs",
    "max_new_tokens": "sampling.max_new_tokens",
    "temperature": "sampling.temperature",
    "top_p": "sampling.top_p",
    "generation_batch_size": "sampling.generation_batch_size",
    "missing_eos_penalty": "sampling.missing_eos_penalty",
    "kl_coef": "kl.coef",
    "kl_estimator": "kl.estimator",
    "kl_placement": "kl.placement",
    "target_kl": "kl.target",
    "kl_horizon": "kl.horizon",
    "advantage_estimator": "advantage.estimator",
    "gamma": "advantage.gamma",
    "lam": "advantage.lam",
    "whiten_advantages": "advantage.whiten",
    "clip_range": "loss.clip_range",
    "entropy_coef": "loss.entropy_coef",
    "loss_aggregation": "loss.aggregation",
    "max_grad_norm": "loss.max_grad_norm",
    "value_model": "value.model",
    "value_learning_rate": "value.learning_rate",
    "value_loss_coef": "value.loss_coef",
    "value_clip_range": "value.clip_range",
    "warmup_rollouts": "optimizer.warmup_steps",
    "warmup_start": "optimizer.warmup_start",
    "gamma_ptx": "ptx.gamma",
    "ptx_micro_batch_size": "ptx.micro_batch_size",
    "truncated_is_cap": "correction.truncated_is_cap",
}
