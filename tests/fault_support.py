"""Test-only callback for the fault-injection suite: records every step's metrics and SIGKILLs its own
process at a chosen moment (between steps, inside a checkpoint save, or inside the Hugging Face export).

Added to a ``lit-rlhf fit`` run from YAML (``trainer.callbacks``) with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import math
import os
import signal
from typing import Literal, Optional

from lightning.pytorch import Callback

#: Metrics that measure wall-clock time, which no two runs share.
TIMING_WORDS = ("per_sec", "time", "seconds")


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAndRecord(Callback):
    """Appends ``{"step", metrics...}`` to ``record`` after every step; SIGKILLs the process at ``at_step``.

    Args:
        record: JSONL file the step metrics are appended to (a resumed run appends after the killed one).
        at_step: Global step at which to kill (``during`` says where); -1 never kills.
        during: ``step``: before training step ``at_step + 1`` (after the checkpoints of step ``at_step``);
            ``checkpoint``: inside the checkpoint save at step ``at_step``, before anything is written;
            ``validation``: as the validation after step ``at_step`` starts (its checkpoint is written);
            ``export``: inside ``save_pretrained`` of the final export, after its config file is written;
            ``swap``: between the two renames that move a finished export into place on a filesystem without an
            atomic exchange (the previous model moved aside, the complete new one not yet in place).
    """

    def __init__(
        self,
        record: str,
        at_step: int = -1,
        during: Literal["step", "checkpoint", "validation", "export", "swap"] = "step",
    ):
        self.record, self.at_step, self.during = record, at_step, during

    def setup(self, trainer, pl_module, stage) -> None:
        if self.during == "swap" and self.at_step >= 0:
            from lit_rlhf import atomic

            def first_rename_then_die(temp, target):
                os.replace(target, atomic._temp_beside(target, "old"))  # the fallback's first rename ...
                kill_now()  # ... and the process dies before the second

            atomic._swap_into_place = first_rename_then_die
        if self.during == "export" and self.at_step >= 0:
            from transformers import PreTrainedModel

            original = PreTrainedModel.save_pretrained

            def save_then_die(model, save_directory, *args, **kwargs):
                model.config.save_pretrained(save_directory)  # the first file is written, the weights never
                kill_now()
                return original(model, save_directory, *args, **kwargs)

            PreTrainedModel.save_pretrained = save_then_die

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.during == "step" and trainer.global_step == self.at_step:
            kill_now()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.during == "validation" and trainer.global_step == self.at_step and not trainer.sanity_checking:
            kill_now()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.during == "checkpoint" and trainer.global_step == self.at_step:
            kill_now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row: dict[str, Optional[float]] = {"step": trainer.global_step}
        for name, value in trainer.callback_metrics.items():
            if any(word in name for word in TIMING_WORDS) or getattr(value, "numel", lambda: 1)() != 1:
                continue
            number = float(value)
            row[name] = number if math.isfinite(number) else None
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


class HoldAtStep(Callback):
    """Waits after training step ``at_step`` until the file ``release`` exists (at most ``timeout_s``): keeps a run
    alive, mid-training, while a test starts another process beside it."""

    def __init__(self, release: str, at_step: int = 1, timeout_s: float = 300.0):
        self.release, self.at_step, self.timeout_s = release, at_step, timeout_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step:
            return
        import time

        deadline = time.monotonic() + self.timeout_s
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.2)
