"""Checkpoints that are whole or absent, and a truncated one named in one line.

Lightning's default writer stages a checkpoint in the system temporary directory and then moves it, which
across filesystems is a copy: on a full disk the copy stops part-way and leaves a truncated ``.ckpt``
(``last.ckpt`` included) that a resume then fails on with a long traceback. :class:`AtomicCheckpointIO`
writes the checkpoint to a temporary file in its own directory, fsyncs it and renames it into place, so a
failed write (no space, a kill) leaves the previous checkpoint, and it names an unreadable checkpoint in one
line on load. The ``lit-rlhf`` command installs it in place of Lightning's default writer.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lit_rlhf.errors import ConfigError


class CheckpointWriteFailed(ConfigError):
    """A checkpoint could not be written (no space, no permission); the previous one is kept."""


class CheckpointUnreadable(ConfigError):
    """A checkpoint file is truncated or not a checkpoint."""


def _is_local(path: Any) -> bool:
    return "://" not in str(path)


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse, in one line, a checkpoint file that is truncated (torch's zip archive has no complete directory)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        ok = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointUnreadable(f"checkpoint {path} cannot be read ({e.strerror})") from None
    if not ok:
        raise CheckpointUnreadable(
            f"checkpoint {path} is truncated or not a checkpoint ({size} bytes; a write cut short by a full disk or a "
            "copy?); resume from an earlier checkpoint in its directory, or delete it to start over"
        )


def _os_error_in(error: BaseException) -> "OSError | None":
    """The OSError in ``error``'s chain (itself, its cause or context), if any."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.NAME.tmp-PID`` beside the checkpoint, fsync, rename; one-line errors on write and load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if not _is_local(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        try:
            with open(temp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except (OSError, RuntimeError) as e:  # torch's zip writer turns a failed write (ENOSPC) into a RuntimeError
            temp.unlink(missing_ok=True)
            cause = _os_error_in(e)
            if cause is None:
                raise
            raise CheckpointWriteFailed(
                f"cannot write checkpoint {target}: {cause.strerror or cause}; nothing was half-written and the "
                "previous checkpoints are kept. Free space (or fix permissions) and resume with --ckpt_path last"
            ) from e
        try:  # the rename itself is durable once the directory is synced
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def load_checkpoint(
        self, path, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        if _is_local(path) and Path(path).is_file():
            check_checkpoint_file(path)
            try:
                return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
            except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
                if "PytorchStreamReader" in str(e) or isinstance(e, (EOFError, zipfile.BadZipFile)):
                    raise CheckpointUnreadable(
                        f"checkpoint {path} is truncated or corrupted ({str(e).splitlines()[0]}); "
                        "resume from an earlier checkpoint in its directory"
                    ) from None
                raise
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
