"""PPOModule's settings groups: each a frozen dataclass whose ``Attributes:`` are its CLI help and whose
``__post_init__`` checks each field's range (one line naming ``group.field``), and :func:`check_ppo_settings` for
what depends on several groups (divisibility, settings a critic-free run refuses).

In YAML each group is a mapping under ``model.init_args``::

    batch: {rollout_batch_size: 32, minibatch_size: 8}
    kl: {coef: 0.02, estimator: k1}
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Optional

from lit_rlhf.algorithms import LossAggregation
from lit_rlhf.engines.base import SamplingSettings
from lit_rlhf.engines.correction import RolloutCorrectionSettings
from lit_rlhf.errors import ConfigError, check_option
from lit_rlhf.models.sources import require_stage_output
from lit_rlhf.settings import OptimizerSettings, settings

__all__ = [
    "AdvantageSettings",
    "KLSettings",
    "OptimizerSettings",
    "PolicyLossSettings",
    "PtxSettings",
    "RolloutBatchSettings",
    "RolloutCorrectionSettings",
    "SamplingSettings",
    "ValueSettings",
    "PPO_OPTIMIZER",
    "PPO_GROUPS",
    "check_ppo_settings",
    "ppo_groups",
    "scalar_model_sources",
]


#: PPO's optimizer defaults (paper): a 10-rollout linear warm-up from 1/10 of the LR, then constant.
PPO_OPTIMIZER = OptimizerSettings(learning_rate=1e-5, warmup_steps=10, warmup_start=0.1, min_lr_ratio=1.0)


@dataclass(frozen=True)
class RolloutBatchSettings:
    """Batch sizes, per device (the batch vocabulary: :mod:`lit_rlhf.modules.rollout`).

    Attributes:
        rollout_batch_size: Episodes per rollout (paper 512); a multiple of ``minibatch_size`` and
            ``samples_per_prompt``.
        samples_per_prompt: Responses sampled per prompt (1 for PPO; >= 2 for ``rloo``/``grpo``).
        minibatch_size: Episodes per optimizer step (paper 64).
        micro_batch_size: Episodes per forward pass: memory only, the step's gradient does not depend on it.
        ppo_epochs: Passes of updates over each rollout batch (paper 1).
        max_staleness: 0: synchronous (generate, then update, each rollout). 1: the engine samples the next rollout
            while the trainer updates on this one, so each update uses episodes one policy version old (asynchronous
            rollouts, docs/engines.md); needs an engine with its own weights (``HFWorkerEngine``, ``VLLMEngine``)
            and ``correction.truncated_is_cap``.
    """

    rollout_batch_size: int = 512
    samples_per_prompt: int = 1
    minibatch_size: int = 64
    micro_batch_size: int = 8
    ppo_epochs: int = 1
    max_staleness: int = 0

    def __post_init__(self) -> None:
        for spec in fields(self):
            if spec.name != "max_staleness":
                check_option(f"batch.{spec.name}", getattr(self, spec.name), min=1, integer=True)
        check_option("batch.max_staleness", self.max_staleness, min=0, max=1, integer=True)


@dataclass(frozen=True)
class KLSettings:
    """The KL penalty to the reference (SFT) policy.

    Attributes:
        coef: KL coefficient beta (paper 0.02), or the starting beta when ``target`` is set. A resumed run whose
            config changed it uses the new value.
        estimator: Per-token KL estimator: ``k1`` (paper, log-ratio), ``k2`` or ``k3``.
        placement: ``reward``: ``-beta * KL_t`` in every token's reward (paper eq. 2); ``loss``: ``beta * KL_t``
            added to the policy loss with its gradient (as GRPO does; ``k3`` is the usual estimator there).
        target: Per-sequence KL that an adaptive controller steers beta towards. Unset: beta stays fixed.
        horizon: Episodes over which the adaptive controller makes a full correction.
    """

    coef: float = 0.02
    estimator: Literal["k1", "k2", "k3"] = "k1"
    placement: Literal["reward", "loss"] = "reward"
    target: Optional[float] = None
    horizon: int = 10000

    def __post_init__(self) -> None:
        check_option("kl.coef", self.coef, min=0)
        check_option("kl.target", self.target, min=0, min_open=True)
        check_option("kl.horizon", self.horizon, min=1, integer=True)


@dataclass(frozen=True)
class AdvantageSettings:
    """How advantages are estimated.

    Attributes:
        estimator: ``gae`` (paper; a value model is trained), or critic-free ``rloo`` (leave-one-out baseline,
            Ahmadian et al. 2024) / ``grpo`` (group-standardised, Shao et al. 2024) from the other samples of the
            same prompt.
        gamma: GAE discount (paper 1: none).
        lam: GAE lambda.
        whiten: Normalise advantages over each rollout batch. Default: on for ``gae``, off otherwise.
    """

    estimator: Literal["gae", "rloo", "grpo"] = "gae"
    gamma: float = 1.0
    lam: float = 0.95
    whiten: Optional[bool] = None

    def __post_init__(self) -> None:
        check_option("advantage.gamma", self.gamma, min=0, max=1)
        check_option("advantage.lam", self.lam, min=0, max=1)

    @property
    def uses_critic(self) -> bool:
        return self.estimator == "gae"


@dataclass(frozen=True)
class PolicyLossSettings:
    """The policy loss and the gradient clip of each optimizer step.

    Attributes:
        clip_range: PPO ratio clip epsilon (paper 0.2).
        entropy_coef: Weight of an entropy bonus (subtracted from the policy loss); 0 = none.
        aggregation: How a step's per-token losses are averaged: ``token_mean`` (every token of the step weighs the
            same), ``sequence_mean`` (each response's mean, then the responses'), or ``constant`` (Dr. GRPO: token
            sum over ``responses x max_new_tokens``).
        max_grad_norm: Global gradient-norm clip over policy and value parameters. Unset: no clipping.
    """

    clip_range: float = 0.2
    entropy_coef: float = 0.0
    aggregation: LossAggregation = "token_mean"
    max_grad_norm: Optional[float] = 1.0

    def __post_init__(self) -> None:
        check_option("loss.clip_range", self.clip_range, min=0, min_open=True)
        check_option("loss.entropy_coef", self.entropy_coef, min=0)
        check_option("loss.max_grad_norm", self.max_grad_norm, min=0, min_open=True)


@dataclass(frozen=True)
class ValueSettings:
    """The value model (critic) of ``advantage.estimator: gae``; a critic-free run refuses changed values.

    Attributes:
        model: Initialisation of the value model. Default: ``reward_model`` (paper).
        learning_rate: Value-model learning rate. Default: ``optimizer.learning_rate``.
        loss_coef: Weight of the value loss.
        clip_range: How far one update may move a value prediction from its rollout value.
    """

    model: Optional[str] = None
    learning_rate: Optional[float] = None
    loss_coef: float = 0.1
    clip_range: float = 0.2

    def __post_init__(self) -> None:
        check_option("value.learning_rate", self.learning_rate, min=0, min_open=True)
        check_option("value.loss_coef", self.loss_coef, min=0)
        check_option("value.clip_range", self.clip_range, min=0, min_open=True)


@dataclass(frozen=True)
class PtxSettings:
    """The pretraining mix (PPO-ptx, InstructGPT eq. 2): next-token loss on pretraining text in every step.

    Attributes:
        gamma: Weight of the pretraining next-token loss (paper 27.8); 0 is plain PPO.
        micro_batch_size: Pretraining sequences per forward pass. Default: ``batch.micro_batch_size``.
        measure_grad_norm_every: Every N rollouts, measure the PPO and the ptx gradient norms separately
            (``ptx/grad_norm``, ``ptx/ppo_grad_norm``, logged by ``PretrainMixLogger``); a measured step holds the
            PPO gradients aside meanwhile (one extra gradient copy). 0 never measures.
    """

    gamma: float = 27.8
    micro_batch_size: Optional[int] = None
    measure_grad_norm_every: int = 0

    def __post_init__(self) -> None:
        check_option("ptx.gamma", self.gamma, min=0)
        check_option("ptx.micro_batch_size", self.micro_batch_size, min=1, integer=True)
        check_option("ptx.measure_grad_norm_every", self.measure_grad_norm_every, min=0, integer=True)

    def require_data(self, has_data: bool) -> None:
        """Refuse ``gamma > 0`` without pretraining data, in one line (the CLI asks before models load, the module
        again for Python users)."""
        if self.gamma > 0 and not has_data:
            raise ConfigError(
                f"model.ptx.gamma={self.gamma} needs pretraining data: set data.init_args.ptx_text (and "
                "ptx_ratio > 0), or model.ptx.gamma: 0 for plain PPO"
            )


#: PPOModule's settings groups, by constructor argument.
PPO_GROUPS: dict[str, type] = {
    "batch": RolloutBatchSettings,
    "sampling": SamplingSettings,
    "kl": KLSettings,
    "advantage": AdvantageSettings,
    "loss": PolicyLossSettings,
    "value": ValueSettings,
    "optimizer": OptimizerSettings,
    "ptx": PtxSettings,
    "correction": RolloutCorrectionSettings,
}


def ppo_groups(**given: Any) -> dict[str, Any]:
    """Every group of :data:`PPO_GROUPS` as its type (a mapping's missing keys take the defaults, PPO's own for the
    optimizer), checked one by one and then together (:func:`check_ppo_settings`)."""
    groups = {
        name: settings(cls, given.get(name), PPO_OPTIMIZER if cls is OptimizerSettings else None)
        for name, cls in PPO_GROUPS.items()
    }
    check_ppo_settings(groups["batch"], groups["advantage"], groups["value"], groups["correction"])
    return groups


def check_ppo_settings(
    batch: RolloutBatchSettings,
    advantage: AdvantageSettings,
    value: ValueSettings,
    correction: Optional[RolloutCorrectionSettings] = None,
) -> None:
    """Raise :class:`ConfigError` for the first combination of groups that cannot work."""
    if batch.max_staleness and (correction is None or correction.truncated_is_cap is None):
        # The decoupled loss's behaviour weight pi_prox / pi_behav is unbounded without a cap (docs/engines.md).
        raise ConfigError(
            f"batch.max_staleness={batch.max_staleness} samples with stale weights: set correction.truncated_is_cap "
            "(the cap of the decoupled loss's importance weight, e.g. 2.0)"
        )
    for divisor in ("minibatch_size", "samples_per_prompt"):
        if batch.rollout_batch_size % getattr(batch, divisor):
            raise ConfigError(
                f"batch.rollout_batch_size must be a multiple of batch.{divisor} (rollout_batch_size="
                f"{batch.rollout_batch_size}, {divisor}={getattr(batch, divisor)})"
            )
    if advantage.uses_critic:
        return
    if batch.samples_per_prompt < 2:
        raise ConfigError(
            f"advantage.estimator={advantage.estimator} compares the samples of a prompt: set "
            f"batch.samples_per_prompt >= 2 (got {batch.samples_per_prompt})"
        )
    changed = [f"value.{spec.name}" for spec in fields(value) if getattr(value, spec.name) != spec.default]
    changed += [
        f"advantage.{name}"
        for name in ("gamma", "lam")
        if getattr(advantage, name) != AdvantageSettings.__dataclass_fields__[name].default
    ]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)} set, but advantage.estimator={advantage.estimator} trains no value "
            "model: remove them, or use advantage.estimator: gae"
        )


def scalar_model_sources(
    reward_model: Optional[str], value: ValueSettings, rewards, uses_critic: bool
) -> dict[str, str]:
    """The reward/value model directories the run will read (checked to exist), by argument name. ``reward_model``
    is needed only when a reward component reads it or the critic starts from it."""
    needs_reward_model = (uses_critic and value.model is None) or any(r.uses_reward_model() for r in rewards)
    if needs_reward_model and reward_model is None:
        raise ConfigError(
            "reward_model is not set, but the default reward (RewardModelScore) or the value model's "
            "initialisation needs it: set model.init_args.reward_model, or rewards / value.model"
        )
    sources = {"reward_model": reward_model if needs_reward_model else None, "value.model": value.model}
    sources = {argument: source for argument, source in sources.items() if source}
    for argument, source in sources.items():
        require_stage_output(source, argument, "configs/rm.yaml")
    return sources
