"""KL between the policy and its reference: how far RL has moved the model, and a guard against drifting off."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lit_rlhf.algorithms import masked_mean, masked_sum
from lit_rlhf.episodes import RolloutSummary
from lit_rlhf.reliability.guards import TrainingStopped

CHECKPOINT_NAME = "kl_exceeded.ckpt"


class KLTracker(Callback):
    """Logs the KL of each rollout to the reference, and acts when it passes a bound.

    Reads the rollout's per-token KL (``outputs["rollout"].episodes.kl``: the estimate the reward uses, see the
    module's ``kl.estimator``) after every rollout and logs ``kl/per_token`` (mean over response tokens),
    ``kl/per_sequence`` (mean over episodes of each response's summed KL), ``kl/running_mean``
    (mean of ``kl/per_sequence`` over all rollouts so far, kept across resumes) and
    ``kl/q<percent>`` quantiles of the per-sequence KL.

    Args:
        max_kl: Bound on the mean per-sequence KL in nats. Above it: a warning (and a stop with
            ``stop_on_exceed``). Unset: no bound.
        stop_on_exceed: Save ``kl_exceeded.ckpt`` (the diverged state, for inspection) and stop training when the
            bound is passed: the run exits non-zero with one line, ``last.ckpt`` stays the last good state and
            nothing is exported.
        quantiles: Quantiles (in [0, 1]) of the per-sequence KL to log.
        checkpoint_dir: Where ``kl_exceeded.ckpt`` goes. Default: the ModelCheckpoint's directory,
            else the trainer's ``default_root_dir``.
    """

    def __init__(
        self,
        max_kl: Optional[float] = None,
        stop_on_exceed: bool = False,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        checkpoint_dir: Optional[str] = None,
    ):
        if any(not 0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
        self.max_kl = max_kl
        self.stop_on_exceed = stop_on_exceed
        self.quantiles = tuple(quantiles)
        self.checkpoint_dir = checkpoint_dir
        self.total = 0.0
        self.count = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        summary = RolloutSummary.from_outputs(outputs)
        if summary is None or summary.episodes.kl is None:
            return
        rollout = summary.episodes
        mask = rollout.response_mask
        per_sequence = masked_sum(rollout.kl, mask, dim=1).float()
        mean_kl = float(trainer.strategy.reduce(per_sequence.mean(), reduce_op="mean"))  # one decision for all ranks
        self.total += mean_kl
        self.count += 1
        metrics = {
            "kl/per_token": masked_mean(rollout.kl, mask),
            "kl/per_sequence": per_sequence.mean(),
            "kl/running_mean": torch.tensor(self.total / self.count),
        }
        values = torch.quantile(per_sequence, torch.tensor(self.quantiles, device=per_sequence.device))
        metrics.update({f"kl/q{round(q * 100)}": v for q, v in zip(self.quantiles, values)})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rollout))
        if self.max_kl is not None and mean_kl > self.max_kl:
            self._exceeded(trainer, summary.index, mean_kl)

    def _exceeded(self, trainer: Trainer, rollouts_done: int, mean_kl: float) -> None:
        where = f"rollout {rollouts_done} (global step {trainer.global_step})"
        message = f"KL to the reference is {mean_kl:.3f} nats per sequence at {where}, above max_kl={self.max_kl}"
        if not self.stop_on_exceed:
            rank_zero_warn(f"{message}; raise model.kl.coef or set a kl.target to pull it back.")
            return
        path = Path(
            self.checkpoint_dir or getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        )
        trainer.save_checkpoint(path / CHECKPOINT_NAME)  # collective: every rank reaches here (reduced decision)
        # Raising (not should_stop) keeps every later checkpoint save and the export from running: last.ckpt stays
        # the last good state and output_dir keeps whatever good model it held.
        raise TrainingStopped(
            f"{message}; stopped without exporting. The diverged state is {path / CHECKPOINT_NAME}; "
            "resume from the last good checkpoint (--ckpt_path last) with a larger kl.coef or a lower "
            "optimizer.learning_rate (new values apply on resume)."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total, self.count = state_dict["total"], state_dict["count"]
