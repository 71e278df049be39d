"""How the pretraining mix (PPO-ptx) is doing: its loss, its weight, its share of the gradient, and the
held-out pretraining loss that ptx exists to protect (InstructGPT's "alignment tax", appendix E.6)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class PretrainMixLogger(Callback):
    """Logs the PPO-ptx mix after every rollout and the held-out pretraining loss after every validation.

    Per rollout: ``ptx/loss`` (next-token loss on the rollout's pretraining batches), ``ptx/gamma``
    (gamma_ptx); on measured rollouts also ``ptx/grad_norm`` (norm of gamma_ptx x the ptx gradient),
    ``ptx/ppo_grad_norm`` (norm of the PPO gradient) and ``ptx/grad_norm_ratio`` (their ratio, averaged
    over the rollout's optimizer steps). Per validation (with ``val_text`` data): ``val/pretrain_loss``
    is logged by the module; this adds ``val/pretrain_loss_change``, its change since the first validation.

    Args:
        grad_norm_every_n_rollouts: Measure the two gradient norms separately every N rollouts; a measured
            step holds the PPO gradients aside while the ptx gradients are computed (one extra gradient
            copy). 0 never measures.
    """

    def __init__(self, grad_norm_every_n_rollouts: int = 10):
        if grad_norm_every_n_rollouts < 0:
            raise ValueError(f"grad_norm_every_n_rollouts must be >= 0, got {grad_norm_every_n_rollouts}")
        self.every = grad_norm_every_n_rollouts
        self.baseline: Optional[float] = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        pl_module.measure_ptx_grad_norm = self.every > 0 and getattr(pl_module, "rollouts_done", 0) % self.every == 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        stats = getattr(pl_module, "last_stats", {})
        metrics = {"ptx/gamma": torch.tensor(float(pl_module.hparams.get("gamma_ptx", 0.0)))}
        if "ptx/loss" in stats:
            metrics["ptx/loss"] = stats["ptx/loss"]
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if pl_module.measure_ptx_grad_norm and "ptx/grad_norm" in stats:
            ratio = stats["ptx/grad_norm"] / stats["ptx/ppo_grad_norm"].clamp(min=1e-12)
            norms = {"ptx/grad_norm": stats["ptx/grad_norm"], "ptx/ppo_grad_norm": stats["ptx/ppo_grad_norm"], "ptx/grad_norm_ratio": ratio}
            # Straight to the loggers: a value logged through self.log on only some steps is repeated on the others.
            self._log_now(trainer, pl_module, {k: float(v) for k, v in norms.items()})
        pl_module.measure_ptx_grad_norm = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/pretrain_loss")
        if trainer.sanity_checking or loss is None:
            return
        if self.baseline is None:
            self.baseline = float(loss)
        self._log_now(trainer, pl_module, {"val/pretrain_loss_change": float(loss) - self.baseline})

    @staticmethod
    def _log_now(trainer: Trainer, pl_module: LightningModule, metrics: dict[str, float]) -> None:
        """Log at the step Lightning uses for this rollout's metrics (one logger step per rollout)."""
        step = max(getattr(pl_module, "rollouts_done", trainer.global_step) - 1, 0)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline = state_dict["baseline"]
