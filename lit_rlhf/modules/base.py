"""What every stage shares, once: model loading with LoRA, the frozen reference, the EMA of trained
weights, sharding, frozen models kept out of checkpoints, exact loss normalisation, optimizer and
schedule, and the Hugging Face export.

A stage (SFT, RM, PPO, DPO) subclasses :class:`StageModule`, builds its models in
``configure_model`` with :meth:`~StageModule.load_trained` / :meth:`~StageModule.load_reference`,
names the model it exports (``export_attribute``) and the frozen ones (``frozen_models``), and
writes its loss and loop; nothing else.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_rlhf.algorithms import ema_update
from lit_rlhf.distributed.collectives import all_reduce_mean, attached_trainer
from lit_rlhf.distributed.export import export_hf, full_state_dict
from lit_rlhf.distributed.sharding import shard_models
from lit_rlhf.errors import ConfigError
from lit_rlhf.lora import LoraOptions, adapters_disabled, apply_lora
from lit_rlhf.models.heads import scalar_head_name
from lit_rlhf.models.loading import default_tokenizer_source, load_causal_lm, load_scalar_model, load_tokenizer
from lit_rlhf.modules.optim import adamw, lr_schedule
from lit_rlhf.settings import OptimizerSettings, as_hparams

FrozenDtype = Optional[Literal["float32", "bfloat16", "float16"]]


class EMAWeights(torch.nn.Module):
    """An exponential moving average of a model's *trained* parameters (frozen base weights are not copied).

    The averages are buffers, so they move with the module, are sharded like their parameters
    (clones of DTensors are DTensors) and go into checkpoints. They stay float32 whatever the
    training precision: in bf16 an update of ``(1 - decay) x (param - average)`` is below half an
    ulp and would round away. :meth:`applied` swaps them into the model for evaluation or export
    and restores the trained weights afterwards.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        for i, (_, p) in enumerate(self._trained(model)):
            self.register_buffer(f"w{i}", p.detach().clone().float())

    def _apply(self, fn, recurse: bool = True):
        """Moves between devices like any module, but a precision plugin's cast leaves the averages float32."""
        originals = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, before in originals.items():
            after = self._buffers[name]
            if (
                before is not None
                and after is not None
                and before.dtype == torch.float32
                and after.dtype != torch.float32
            ):
                self._buffers[name] = before.to(device=after.device)
        return self

    def _trained(self, model: torch.nn.Module) -> list[tuple[str, Tensor]]:
        params = dict(model.named_parameters())
        return [(name, params[name]) for name in self.names]

    def averages(self) -> list[Tensor]:
        return [getattr(self, f"w{i}") for i in range(len(self.names))]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_update(self.averages(), [p for _, p in self._trained(model)], self.decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``model`` holding the averaged weights inside the block, its trained weights restored after."""
        trained = self._trained(model)
        saved = [p.detach().clone() for _, p in trained]
        with torch.no_grad():
            for (_, p), average in zip(trained, self.averages()):
                p.copy_(average)
        try:
            yield model
        finally:
            with torch.no_grad():
                for (_, p), original in zip(trained, saved):
                    p.copy_(original)

    def state_for_export(self, model_prefix: str, ema_prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (a module's full state dict) with the model's trained entries replaced by their averages."""
        out = dict(state)
        for i, name in enumerate(self.names):
            out[f"{model_prefix}.{name}"] = state[f"{ema_prefix}.w{i}"]
        return out


class StageModule(LightningModule):
    """Base of the stage modules. Subclasses set ``export_attribute`` (the model written at the end of ``fit``)
    and ``frozen_models`` (attributes rebuilt from their directories, never checkpointed), keep their settings
    groups as typed attributes (``optimizer``: :class:`~lit_rlhf.settings.OptimizerSettings`) saved with
    :meth:`save_settings_and_hyperparameters`, and call :meth:`init_stage` from their constructor."""

    #: AdamW and its schedule, as configured now (a resumed run applies a changed learning rate).
    optimizer: OptimizerSettings

    #: The attribute holding the model that ``output_dir`` receives.
    export_attribute: str = "model"
    #: Attributes (and prefixes of state-dict keys) of models that are never trained nor checkpointed.
    frozen_models: tuple[str, ...] = ()

    def save_settings_and_hyperparameters(self, ignore: Sequence[str] = (), **groups: Any) -> None:
        """``save_hyperparameters()`` of the calling constructor's arguments but ``ignore``, with each settings group
        in ``groups`` (name -> the typed group the module keeps) stored as a plain dict: a checkpoint then loads with
        ``torch.load(weights_only=True)``, and ``load_from_checkpoint`` passes the dicts back to the constructor,
        which coerces them with :func:`~lit_rlhf.settings.settings`."""
        self.save_hyperparameters(ignore=[*ignore, *groups], frame=inspect.currentframe().f_back)
        self.save_hyperparameters({name: as_hparams(group) for name, group in groups.items()})

    def init_stage(
        self, model_source: str, tokenizer: Optional[str], lora: Optional[LoraOptions], output_dir: Optional[str]
    ) -> None:
        """Common construction: the tokenizer, and the state every stage keeps."""
        self.tokenizer = load_tokenizer(default_tokenizer_source(model_source, tokenizer))
        self.ema: Optional[EMAWeights] = None
        self.lora_options, self.output_dir = lora, output_dir
        self._step_normalizer = torch.zeros((), dtype=torch.float64)

    # ------------------------------------------------------------------------------------------
    # Models

    def load_trained(self, source: str, kind: Literal["causal", "scalar"] = "causal", **kwargs) -> torch.nn.Module:
        """A trained model (train mode), with LoRA adapters when ``lora`` is set (a scalar model's new head trains in
        full)."""
        if kind == "causal":
            model = load_causal_lm(source, **kwargs).train()
            return apply_lora(model, self.lora_options)
        model = load_scalar_model(source, **kwargs).train()
        return apply_lora(model, self.lora_options, head=scalar_head_name(model))

    def load_reference(self, source: str, dtype: FrozenDtype = None) -> Optional[torch.nn.Module]:
        """The frozen reference: a second copy of ``source``; None with LoRA, where the reference is the trained
        model with its adapters off (see :meth:`reference_view`), so the base weights are held once."""
        if self.lora_options is not None:
            return None
        return load_causal_lm(source, dtype=getattr(torch, dtype) if dtype else None, trainable=False)

    @contextlib.contextmanager
    def reference_view(
        self, reference: Optional[torch.nn.Module], trained: torch.nn.Module
    ) -> Iterator[torch.nn.Module]:
        """The reference model to run: ``reference``, or ``trained`` with its adapters disabled (LoRA)."""
        if reference is not None:
            yield reference
            return
        with adapters_disabled(trained) as base:
            yield base

    def enable_ema(self, model: torch.nn.Module, decay: Optional[float]) -> None:
        """Keep an EMA of ``model``'s trained parameters (None: no EMA)."""
        if decay is not None:
            self.ema = EMAWeights(model, decay)

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[torch.nn.Module]:
        """The exported model as it is evaluated and written: with the EMA weights applied when an EMA is kept."""
        model = getattr(self, self.export_attribute)
        if self.ema is None:
            yield model
            return
        with self.ema.applied(model):
            yield model

    def shard(self, models: Iterable[Optional[torch.nn.Module]]) -> None:
        """FSDP2 under ``ModelParallelStrategy`` (each model its own unit); a no-op otherwise."""
        shard_models(self, list(models))

    # ------------------------------------------------------------------------------------------
    # Checkpoints: trained state only

    def _is_frozen_key(self, key: str, prefix: str = "") -> bool:
        return key.startswith(tuple(f"{prefix}{name}." for name in self.frozen_models))

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only trained state: frozen models are rebuilt from their directories."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if self._is_frozen_key(k, prefix)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads checkpoints without the frozen models; anything else missing or unexpected still fails when strict."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not self._is_frozen_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"checkpoint does not match {type(self).__name__}: missing {missing[:5]}, unexpected "
                f"{result.unexpected_keys[:5]}"
            )
        return result

    # ------------------------------------------------------------------------------------------
    # Optimizer

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_optimizer_lrs = [
            [group.get("initial_lr", group["lr"]) for group in opt["param_groups"]]
            for opt in checkpoint.get("optimizer_states", [])
        ]

    def on_train_start(self) -> None:
        """A resumed run whose config changed a learning rate applies the new one (and says so)."""
        saved = getattr(self, "_resumed_optimizer_lrs", None)
        if not saved:
            return
        for optimizer, saved_lrs in zip(self.trainer.optimizers, saved):
            for group, old, new in zip(optimizer.param_groups, saved_lrs, self.configured_learning_rates()):
                if new is None or abs(old - new) <= 1e-12 * max(abs(old), 1e-30):
                    continue
                group["initial_lr"] = new
                group["lr"] *= new / old
                rank_zero_info(
                    f"resumed with learning rate {new:g} (the checkpoint's was {old:g}); the new value applies"
                )
            for config in self.trainer.lr_scheduler_configs:
                scheduler = config.scheduler
                if hasattr(scheduler, "base_lrs") and scheduler.optimizer is optimizer:
                    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self._resumed_optimizer_lrs = None

    def configured_learning_rates(self) -> list[Optional[float]]:
        """The peak learning rate of each param group as configured now (for the resume check)."""
        return [self.optimizer.learning_rate]

    # ------------------------------------------------------------------------------------------
    # Exact loss normalisation under automatic optimization (SFT, RM, DPO)

    def sum_loss_for_step(self, loss_sum: Tensor, count: Tensor) -> Tensor:
        """The value to return from ``training_step`` for a loss that is a *sum* over ``count`` items (tokens,
        prompts or pairs): the gradients of the step's micro-batches and ranks add up, and
        :meth:`on_before_optimizer_step` divides them by the step's item count over all of them. The
        step's gradient is then the exact mean over the whole step, however it was split."""
        self._step_normalizer = self._step_normalizer.to(count.device) + count.detach().to(torch.float64)
        trainer = attached_trainer(self)
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        return loss_sum * accumulate  # Lightning divides the returned loss by it

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self.automatic_optimization or not bool(self._step_normalizer):
            return
        # Gradients are already averaged over ranks, so divide by the mean count per rank.
        per_rank = all_reduce_mean(self._step_normalizer.to(self.device), self).item()
        self._step_normalizer = torch.zeros((), dtype=torch.float64)
        scale = 1.0 / max(per_rank, 1e-12)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)

    # ------------------------------------------------------------------------------------------
    # Export

    def export_state(self) -> Optional[dict[str, Tensor]]:
        """Override: the weights to export as a module state dict; None = the current (or EMA) weights."""
        return None

    def on_fit_end(self) -> None:
        if not self.output_dir:
            return
        state = self.export_state()
        if state is None and self.ema is not None:
            state = full_state_dict(self.trainer)  # a collective; complete on rank 0, which writes
            if self.trainer.is_global_zero:
                state = self.ema.state_for_export(self.export_attribute, "ema", state)
        lora_export = self.lora_options.export if self.lora_options else "merged"
        export_hf(self, self.export_attribute, self.tokenizer, self.output_dir, state=state, lora_export=lora_export)


def cosine_optimizer(model: torch.nn.Module, settings: OptimizerSettings, total_steps: float) -> dict:
    """Lightning's optimizer config for SFT, RM and DPO: AdamW over ``model``'s trainable parameters and the
    schedule of ``settings`` (:func:`~lit_rlhf.modules.optim.lr_schedule`) stepped once per optimizer step over
    ``total_steps`` (the trainer's ``estimated_stepping_batches``): the paper's cosine to ``min_lr_ratio``."""
    decays = settings.min_lr_ratio < 1
    if decays and not (0 < total_steps < math.inf):
        raise ConfigError(
            "the cosine schedule needs a finite number of steps: set trainer.max_epochs or trainer.max_steps"
        )
    if decays and not settings.warmup_steps < total_steps:
        raise ConfigError(
            f"optimizer.warmup_steps ({settings.warmup_steps}) must be below the run's {total_steps} optimizer steps"
        )
    params = [{"params": list(model.parameters())}]
    optimizer = adamw(params, settings.learning_rate, settings.betas, settings.weight_decay)
    schedule = {"scheduler": lr_schedule(optimizer, settings, total_steps), "interval": "step", "name": "lr"}
    return {"optimizer": optimizer, "lr_scheduler": schedule}
