"""Progress that a log file shows: when standard output is not a terminal (nohup, SLURM, CI logs) the progress
bar draws nothing useful, so this prints one plain line every ``every_n_steps`` optimizer steps or
``every_n_seconds`` seconds, whichever comes first::

    lit-rlhf: step 40/200 (epoch 1) train/loss 0.6931 | 1.52 steps/s | elapsed 26s | ETA 1m45s

and flushes the loggers (the CSV log otherwise writes every 100 steps) at the same rhythm. The ``lit-rlhf``
command adds it to every run; on a terminal it does nothing.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Optional

from lightning.pytorch import Callback, LightningModule, Trainer


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class PlainProgress(Callback):
    """Plain progress lines (step, loss, rate, ETA) and logger flushes when output is not a terminal.

    Args:
        every_n_steps: Print after this many optimizer steps since the last line.
        every_n_seconds: ... or after this many seconds, whichever comes first.
        force: Print even on a terminal.
    """

    def __init__(self, every_n_steps: int = 50, every_n_seconds: float = 30.0, force: bool = False):
        self.every_n_steps, self.every_n_seconds, self.force = every_n_steps, every_n_seconds, force
        self._start = self._last_time = 0.0
        self._start_step = self._last_step = 0
        self._start_fraction = 0.0

    def _active(self, trainer: Trainer) -> bool:
        if not trainer.is_global_zero:
            return False
        if self.force:
            return True
        try:
            return not sys.stdout.isatty()
        except (AttributeError, ValueError):
            return True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._last_time = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        try:
            self._start_fraction = self._fraction(trainer) or 0.0
        except Exception:
            self._start_fraction = 0.0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self._active(trainer):
            return
        now, step = time.monotonic(), trainer.global_step
        if step - self._last_step < self.every_n_steps and now - self._last_time < self.every_n_seconds:
            return
        self._last_time, self._last_step = now, step
        print(self.line(trainer, now), flush=True)
        for logger in trainer.loggers:
            try:
                logger.save()
            except Exception:  # a logger that cannot flush now will at the end
                pass

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active(trainer) and trainer.global_step != self._last_step:
            print(self.line(trainer, time.monotonic()), flush=True)

    def line(self, trainer: Trainer, now: float) -> str:
        step, elapsed = trainer.global_step, now - self._start
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 else float("nan")
        fraction = self._fraction(trainer)
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"lit-rlhf: step {step}{total} (epoch {trainer.current_epoch})"]
        loss = self._loss(trainer)
        if loss is not None:
            parts[0] += f" {loss[0]} {loss[1]:.4g}"
        parts.append(f"{rate:.3g} steps/s" if rate >= 0.1 else f"{1 / rate:.3g} s/step" if rate > 0 else "? steps/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if fraction is not None and 0 < fraction and done > 0:
            progress = fraction - self._start_fraction
            eta = elapsed * (1 - fraction) / progress if progress > 0 else float("nan")
            parts.append(f"ETA {_duration(max(eta, 0.0))}")
        return " | ".join(parts)

    @staticmethod
    def _loss(trainer: Trainer) -> Optional[tuple[str, float]]:
        metrics = trainer.callback_metrics
        names = [n for n in metrics if n.startswith("train") and "loss" in n]
        names.sort(key=lambda n: (n != "train/loss", not n.startswith("train/loss"), len(n)))  # then its _step copy
        for name in names:
            value = metrics[name]
            if getattr(value, "numel", lambda: 1)() == 1:
                return name, float(value)
        return None

    @staticmethod
    def _fraction(trainer: Trainer) -> Optional[float]:
        """How much of the run is done, by max_steps or by epochs (the smaller bound)."""
        fractions = []
        if trainer.max_steps and trainer.max_steps > 0:
            fractions.append(trainer.global_step / trainer.max_steps)
        batches = trainer.num_training_batches
        if (
            trainer.max_epochs
            and trainer.max_epochs > 0
            and isinstance(batches, (int, float))
            and math.isfinite(batches)
            and batches > 0
        ):
            in_epoch = (trainer.fit_loop.epoch_loop.batch_progress.current.ready) / batches
            fractions.append((trainer.current_epoch + min(in_epoch, 1.0)) / trainer.max_epochs)
        return max(fractions) if fractions else None
