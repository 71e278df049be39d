"""Resuming a run repeats what the interrupted run would have done, validation included.

A checkpoint written after a training step that is followed by a validation (the last batch of an
epoch, or a ``val_check_interval`` batch) holds the weights *before* that validation ran. Lightning
resumes such a checkpoint past the validation: killed during it, the run never validates that
step. :class:`PendingValidation` records in each checkpoint whether a validation was still due and, on
``--ckpt_path`` resume, runs it before training continues. The ``lit-rlhf`` command adds it to every run.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_info


class PendingValidation(Callback):
    """Runs, on resume, the validation that was due right after the checkpoint's training step."""

    def __init__(self) -> None:
        self.due_on_resume = False

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING or trainer.state.stage != RunningStage.TRAINING:
            return {"validation_due": False}  # written during or after a validation: nothing is left to run
        loop = trainer.fit_loop.epoch_loop
        return {"validation_due": bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.due_on_resume = bool(state_dict.get("validation_due", False))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.due_on_resume:
            return
        self.due_on_resume = False
        rank_zero_info(f"Resuming at step {trainer.global_step}: running the validation the interrupted run had not finished.")
        # What Lightning's training loop does to validate between two steps.
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
