"""Resuming a run repeats what the interrupted run would have done, validation included.

A checkpoint written after a training step that is followed by a validation (the last batch of an
epoch, or a ``val_check_interval`` batch) holds the weights *before* that validation ran. Lightning
resumes such a checkpoint past the validation: killed during it, the run never validates that
step. :class:`PendingValidation` records in each checkpoint whether a validation was still due and, on
``--ckpt_path`` resume, runs it before training continues. The ``lit-rlhf`` command adds it to every run.
"""

from __future__ import annotations

import sys
from pathlib import Path
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
        rank_zero_info(
            f"Resuming at step {trainer.global_step}: running the validation the interrupted run had not finished."
        )
        # What Lightning's training loop does to validate between two steps.
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True


# ----------------------------------------------------------------------------------------------
# Options on resume: the command line and config win, and every option that changed is printed.
#
# LightningCLI merges a checkpoint file's hyperparameters over the parsed config when ``--ckpt_path`` is a
# file (not for ``last``), so an explicit path silently kept the checkpoint's learning rate. The ``lit-rlhf``
# command skips that merge (``LitRLHFCLI._parse_ckpt_path``) and reports the differences instead.


def flatten_options(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for nested dicts, jsonargparse Namespaces and dataclasses (settings groups)."""
    import dataclasses

    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = dataclasses.asdict(node)
    elif hasattr(node, "as_dict") and callable(node.as_dict):
        node = node.as_dict()
    if isinstance(node, dict) and (node or not prefix):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten_options(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(node) if isinstance(node, tuple) else node}


def changed_options(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{option: (checkpoint's value, current value)}`` for every option both have and that differs."""
    old, new = flatten_options(saved), flatten_options(current)
    changed = {}
    for key in sorted(old.keys() & new.keys()):
        if key.startswith("_") or old[key] == new[key]:
            continue
        if isinstance(old[key], float) and isinstance(new[key], (int, float)) and float(new[key]) == old[key]:
            continue
        changed[key] = (old[key], new[key])
    return changed


def checkpoint_hyperparameters(path: str | Path) -> dict[str, Any]:
    """The hyperparameters a Lightning checkpoint was saved with ({} when it has none or they cannot be read)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:
            return {}
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    hparams.pop("_class_path", None)
    return hparams


def report_changed_options(path: str | Path, module: LightningModule) -> dict[str, tuple[Any, Any]]:
    """Print one line listing every model option whose value differs from the checkpoint's; the current value
    applies."""
    changed = changed_options(checkpoint_hyperparameters(path), dict(module.hparams))
    if changed:
        listed = "; ".join(f"{key} = {new!r} (checkpoint: {old!r})" for key, (old, new) in changed.items())
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:
            print(
                f"lit-rlhf: resuming from {path} with {len(changed)} changed option(s), the new values apply: {listed}",
                file=sys.stderr,
                flush=True,
            )
    return changed
