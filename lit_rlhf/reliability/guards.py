"""Guards that stop training before bad numbers reach the weights, with one line that says what tripped and where.

- :func:`check_finite`: PPO (manual optimization) checks its reward, loss and clipped gradient norm;
- :class:`FiniteGradientGuard`: the stages Lightning optimizes (SFT, RM, DPO) stop before an optimizer step whose
  gradients hold a NaN or inf. Raising from ``on_before_optimizer_step`` ends ``fit`` through Lightning's exception
  path: ``on_fit_end`` (the Hugging Face export, RM centering) does not run, and no checkpoint is written after the
  bad step, so the last checkpoint holds the last finite weights. The ``lit-rlhf`` command adds it to every run.

The ``lit-rlhf`` command prints :class:`TrainingStopped` as one line and exits with code 3.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor


class TrainingStopped(RuntimeError):
    """A guard stopped training (NaN/inf, KL bound). The CLI prints it as one line and exits non-zero; the
    last good checkpoint is kept and nothing is exported over a good model."""


def check_finite(name: str, value: Tensor, where: str) -> None:
    """Stop before a NaN/inf reaches the weights (and so any checkpoint)."""
    if not torch.isfinite(value).all():
        raise TrainingStopped(
            f"{name} is NaN or inf at {where}; stopped before the optimizer step, so no checkpoint holds corrupted "
            "weights. Resume from the last checkpoint (--ckpt_path last) with a lower optimizer.learning_rate (the new "
            "value applies on resume), a smaller kl.coef or loss.max_grad_norm, or a reward that gives finite scores."
        )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor shard (FSDP2)


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient of ``optimizer``'s parameters is finite (this rank's shards)."""
    flags = [
        torch.isfinite(_local(p.grad)).all()
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    return bool(torch.stack(flags).all()) if flags else True


class FiniteGradientGuard(Callback):
    """Stops (:class:`TrainingStopped`) before an optimizer step whose gradients hold a NaN or inf: the loss
    went non-finite, or the weights blew up (a learning rate far too high)."""

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not pl_module.automatic_optimization:
            return
        bad = not gradients_finite(optimizer)
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):  # any rank's shard stops every rank
            return
        loss = trainer.callback_metrics.get("train/loss")
        last_loss = (
            f" (the last logged train/loss was {float(loss):.4g})" if loss is not None and loss.numel() == 1 else ""
        )
        raise TrainingStopped(
            f"the loss or its gradient is NaN or inf at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}){last_loss}; stopped before the optimizer step and without exporting, "
            "so no checkpoint holds NaN weights. Resume from the last checkpoint (--ckpt_path last) with a lower "
            "learning_rate (the new value applies on resume) or with trainer.gradient_clip_val set."
        )
