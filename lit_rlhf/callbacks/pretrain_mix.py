"""How the pretraining mix (PPO-ptx) is doing: its loss, its weight, its share of the gradient, and the
held-out pretraining loss that ptx exists to protect (InstructGPT's "alignment tax", appendix E.6)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rlhf.episodes import RolloutSummary


class PretrainMixLogger(Callback):
    """Logs the PPO-ptx mix after every rollout and the held-out pretraining loss after every validation.

    Per rollout (from the module's :class:`~lit_rlhf.episodes.RolloutSummary`): ``ptx/loss`` (next-token loss on
    the rollout's pretraining batches), ``ptx/gamma`` (the module's ``ptx.gamma``); on the rollouts where the module
    measured them (its ``ptx.measure_grad_norm_every``) also ``ptx/grad_norm`` (norm of gamma x the ptx gradient),
    ``ptx/ppo_grad_norm`` (norm of the PPO gradient) and ``ptx/grad_norm_ratio`` (their ratio, averaged over the
    rollout's optimizer steps). Per validation (with ``val_text`` data): ``val/pretrain_loss`` is logged by the
    module; this adds ``val/pretrain_loss_change``, its change since the first validation.
    """

    def __init__(self):
        self.baseline: Optional[float] = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        summary = RolloutSummary.from_outputs(outputs)
        if summary is None:
            return
        stats = summary.stats
        metrics = {"ptx/gamma": torch.tensor(float(summary.ptx_gamma))}
        if "ptx/loss" in stats:
            metrics["ptx/loss"] = stats["ptx/loss"]
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if summary.grad_norms_measured and "ptx/grad_norm" in stats:
            ratio = stats["ptx/grad_norm"] / stats["ptx/ppo_grad_norm"].clamp(min=1e-12)
            norms = {
                "ptx/grad_norm": stats["ptx/grad_norm"],
                "ptx/ppo_grad_norm": stats["ptx/ppo_grad_norm"],
                "ptx/grad_norm_ratio": ratio,
            }
            # Straight to the loggers: a value logged through self.log on only some steps is repeated on the others.
            self._log_now(trainer, pl_module, {k: float(v) for k, v in norms.items()})

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
