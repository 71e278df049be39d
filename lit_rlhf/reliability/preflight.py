"""Checks the ``lit-rlhf`` command runs before the first training step, so that what would fail at save time,
after all the training, fails at once in one line:

- every directory the run writes (``model.output_dir`` and each ``ModelCheckpoint`` dirpath) is locked for this
  run (:mod:`lit_rlhf.reliability.run_lock`), is writable (a test file is written and removed), and its filesystem has
  room for a checkpoint and the export, estimated from the model's size;
- the checkpoint writer is :class:`~lit_rlhf.reliability.checkpoint_io.AtomicCheckpointIO`, and a checkpoint to resume
  from is whole;
- an export left missing by a kill between two renames is restored (:func:`lit_rlhf.atomic.recover_directory`)
  before the models that read it load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rlhf.atomic import recover_directory
from lit_rlhf.errors import ConfigError
from lit_rlhf.reliability.checkpoint_io import AtomicCheckpointIO, check_checkpoint_file
from lit_rlhf.reliability.run_lock import acquire

#: Bytes a checkpoint holds per trained float32 weight: the weight and AdamW's two moments.
CHECKPOINT_BYTES_PER_WEIGHT_BYTE = 3
#: Model arguments whose value is the model a stage trains (and exports).
MODEL_ARGUMENTS = ("model", "policy")


class NotWritable(ConfigError):
    """An output or checkpoint directory cannot be written, or has no room."""


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)
    elif hasattr(node, "as_dict"):  # a jsonargparse Namespace
        yield from _strings(node.as_dict())


def recover_interrupted_exports(config: Any) -> None:
    """Restore every model directory named in ``config`` that a killed export left missing (say so in one line)."""
    for value in _strings(config):
        if len(value) > 4096 or "\n" in value or "://" in value:
            continue
        try:
            note = recover_directory(value)
        except OSError:
            continue
        if note:
            print(f"lit-rlhf: {note}", file=sys.stderr)


def model_bytes(source: Optional[str]) -> int:
    """The size of a model's weights: its weight files on disk, or for a ``.json`` config 4 bytes per parameter
    of the architecture (built on the meta device). 0 when unknown (a hub id)."""
    if not source:
        return 0
    path = Path(source).expanduser()
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    if path.is_file() and path.suffix == ".json":
        try:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
            return 4 * sum(p.numel() for p in model.parameters())
        except Exception:  # an estimate only; the load reports a bad config itself
            return 0
    if path.is_file():
        return path.stat().st_size
    return 0


def _trained_model_source(module: Any) -> Optional[str]:
    hparams = getattr(module, "hparams", {}) or {}
    for name in MODEL_ARGUMENTS:
        value = hparams.get(name) if hasattr(hparams, "get") else None
        if isinstance(value, str):
            return value
    return None


def existing_ancestor(directory: Path) -> Path:
    """``directory`` or its nearest ancestor that exists (where the run's first write would land)."""
    for path in (directory, *directory.parents):
        if path.exists():
            return path
    return Path("/")


def _write_test(directory: Path, option: str, shown: str) -> None:
    """Write and remove a probe file in ``directory`` (or, if it does not exist yet, where it would be created):
    nothing is left behind."""
    where = existing_ancestor(directory)
    probe = where / f".lit-rlhf-write-test-{os.getpid()}"
    try:
        if not where.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise NotWritable(
            f"{option} '{shown}': cannot write to {where} ({e.strerror or e}); choose a writable directory "
            "(checked before the first step, so no training was lost)"
        ) from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def writable_targets(trainer: Trainer, module: Any) -> list[tuple[str, str, Path, int]]:
    """``(option, as configured, directory to write in, bytes needed)`` for every directory this run writes."""
    weights = model_bytes(_trained_model_source(module))
    targets = []
    output_dir = getattr(module, "output_dir", None)
    if output_dir:
        path = Path(output_dir).expanduser().absolute()
        targets.append(("model.output_dir", str(output_dir), path.parent, weights))
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and "://" not in str(callback.dirpath):
            targets.append(
                (
                    "ModelCheckpoint dirpath",
                    str(callback.dirpath),
                    Path(callback.dirpath).expanduser().absolute(),
                    weights * CHECKPOINT_BYTES_PER_WEIGHT_BYTE,
                )
            )
    return targets


def check_disk(trainer: Trainer, module: Any) -> None:
    """Lock, write-test and free-space check of every directory this run writes (rank 0)."""
    targets = writable_targets(trainer, module)
    for option, shown, directory, _ in targets:
        _write_test(directory, option, shown)
    if not trainer.is_global_zero:  # the run's other processes (DDP ranks) share rank 0's locks
        return
    for option, shown, directory, _ in targets:
        acquire(Path(shown) if option == "model.output_dir" else directory, option)
    needed: dict[int, tuple[int, list[str], Path]] = {}
    for _option, shown, directory, size in targets:
        where = existing_ancestor(directory)
        device = os.stat(where).st_dev
        total, names, _ = needed.get(device, (0, [], where))
        needed[device] = (total + size, names + [shown], where)
    for size, names, where in needed.values():
        free = _free_bytes(where)
        if size and free < size:
            raise NotWritable(
                f"{', '.join(names)}: {_gib(free)} free on that filesystem, but a checkpoint and the export of this "
                f"model need about {_gib(size)} (weights x{CHECKPOINT_BYTES_PER_WEIGHT_BYTE} for a checkpoint with "
                "AdamW's moments, plus the weights); free space or choose another directory (checked before the "
                "first step)"
            )


def _free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def install_checkpoint_io(trainer: Trainer) -> None:
    """Lightning's default checkpoint writer replaced by :class:`AtomicCheckpointIO` (a user's own plugin is kept)."""
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def resume_path(trainer: Trainer, ckpt_path: Optional[str]) -> Optional[Path]:
    """The checkpoint file a ``--ckpt_path`` (a file, or ``last``) resumes from, if any."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        found = []
        for callback in trainer.checkpoint_callbacks:
            try:
                found += [Path(p) for p in callback._find_last_checkpoints(trainer)]
            except Exception:
                continue
        found = [p for p in found if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None
    path = Path(ckpt_path).expanduser()
    return path if path.is_file() else None


def before_fit(trainer: Trainer, module: Any, ckpt_path: Optional[str]) -> Optional[Path]:
    """Everything above, in order; returns the checkpoint file a resume will load."""
    install_checkpoint_io(trainer)
    resume = resume_path(trainer, ckpt_path)
    if resume is not None:
        check_checkpoint_file(resume)
    check_disk(trainer, module)
    return resume
