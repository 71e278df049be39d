"""One stage of a chain (``lit-rlhf sandbox run``, ``lit-rlhf recipe``): a child ``lit-rlhf`` command, measured.

A process per stage measures each stage's own peak memory (not the earlier stages' leftovers), and hands all of it
back to the system before the next stage starts.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lit_rlhf.atomic import incomplete_files, read_marker
from lit_rlhf.errors import UserError

CSV = "lightning.pytorch.loggers.CSVLogger"
WANDB = "lightning.pytorch.loggers.WandbLogger"


class StageFailed(UserError, RuntimeError):
    """A stage's ``lit-rlhf`` command exited with an error (printed by the stage itself)."""


@dataclass
class StageCost:
    """What one stage cost: wall-clock seconds and the peak resident memory of its process."""

    wall_s: float
    peak_rss_gib: Optional[float]


def run_command(arguments: list[str], name: str, prefix: str = "lit-rlhf") -> StageCost:
    """``lit-rlhf <arguments>`` in a child process; its wall time and peak resident memory.

    Raises:
        StageFailed: the command exited with an error (its message is already printed).
    """
    command = [sys.executable, "-m", "lit_rlhf.cli", *arguments]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise StageFailed(
            f"stage '{name}' failed (exit code {process.returncode}); its error is printed above. Command: "
            f"{shlex.join(command)}"
        )
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak_gib = usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)
    cost = StageCost(wall_s=time.perf_counter() - started, peak_rss_gib=peak_gib)
    print(f"[{prefix}] {name}: {cost.wall_s:.0f} s, peak memory {peak_gib:.2f} GiB", flush=True)
    return cost


def loggers(stage_dir: Path, name: str, wandb: bool, project: str = "lit-rlhf-sandbox") -> str:
    """The ``--trainer.logger`` value: a CSV log under ``stage_dir`` (and wandb when on)."""
    chosen = [{"class_path": CSV, "init_args": {"save_dir": str(stage_dir), "name": "csv", "version": ""}}]
    if wandb:
        chosen.append(
            {"class_path": WANDB, "init_args": {"project": project, "name": name, "save_dir": str(stage_dir)}}
        )
    return json.dumps(chosen)


def checkpointing(stage_dir: Path, extra: Optional[list] = None) -> str:
    """The ``--trainer.callbacks`` value: the last checkpoint under ``stage_dir``, then ``extra``."""
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(stage_dir / "checkpoints"), "save_last": True},
        }
    ]
    return json.dumps(callbacks + (extra or []))


def fit(
    config: str,
    stage_dir: Path,
    name: str,
    overrides: list[str],
    *,
    wandb: bool,
    callbacks: Optional[list] = None,
    project: str = "lit-rlhf-sandbox",
    prefix: str = "sandbox",
) -> StageCost:
    """One ``lit-rlhf fit --config config`` in a child process, its outputs (logs, checkpoints, ``model``) under
    ``stage_dir``."""
    arguments = [
        "fit",
        "--config",
        config,
        "--trainer.logger",
        loggers(stage_dir, name, wandb, project),
        "--trainer.callbacks",
        checkpointing(stage_dir, callbacks),
        "--trainer.enable_progress_bar",
        "false",
        "--model.init_args.output_dir",
        str(stage_dir / "model"),
        *overrides,
    ]
    cost = run_command(arguments, name, prefix)
    print(f"[{prefix}] {name} -> {stage_dir / 'model'}", flush=True)
    return cost


def exported(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a whole lit-rlhf export (its commit marker, every listed file at its size).

    Exports are written atomically (:func:`lit_rlhf.atomic.atomic_directory`), so a killed stage leaves either the
    previous whole export or none; the marker check also catches a copy cut short later.
    """
    return model_dir.is_dir() and read_marker(model_dir) is not None and not incomplete_files(model_dir)


def reward_model_accuracy(
    rm_dir: str, comparisons: str, limit_batches: Optional[int] = None, **data_options
) -> dict[str, float]:
    """Held-out accuracy of a reward model on ``comparisons`` (``val/accuracy``, ...), by the validation the RM stage
    runs (on the first ``limit_batches`` batches when set); ``data_options`` go to the ``RewardDataModule``
    (``max_length``, ``format``, ``on_invalid``)."""
    from lightning.pytorch import Trainer

    from lit_rlhf.data.comparisons import RewardDataModule
    from lit_rlhf.modules.reward import RewardModule

    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=limit_batches,
    )
    data = RewardDataModule(val=comparisons, **data_options)
    (metrics,) = trainer.validate(RewardModule(model=rm_dir), datamodule=data, verbose=False)
    return {k: float(v) for k, v in metrics.items()}
