"""One run per output and checkpoint directory.

Two ``lit-rlhf fit`` runs writing one directory mix their checkpoints (``last.ckpt`` / ``last-v1.ckpt``) and
overwrite each other's export. Each run takes an exclusive ``flock`` on ``.NAME.lock`` beside every directory it
writes (``model.output_dir``, each ``ModelCheckpoint`` dirpath), ``.lit-rlhf-lock.NAME`` beside it, before its first
step; a second run meets one line naming the holder's PID and command. The kernel drops the lock when its process
dies, so the lock of a killed run is taken over without any cleanup (the file, holding the last holder's PID, stays).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
from pathlib import Path

from lit_rlhf.errors import ConfigError


class DirectoryLocked(ConfigError):
    """Another live run holds the lock of a directory this run writes."""


#: Locks this process holds: resolved lock path -> open file descriptor (kept until the process ends).
_HELD: dict[str, int] = {}


def lock_path(directory: str | Path) -> Path:
    directory = Path(directory).expanduser().absolute()
    return directory.parent / f".lit-rlhf-lock.{directory.name}"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"PID {info.get('pid')}" + (f" (`{info['command']}`)" if info.get("command") else "")
    except (OSError, ValueError, AttributeError):
        return "another process"


def acquire(directory: str | Path, what: str) -> Path:
    """Hold the lock of ``directory`` (written by this run as ``what``) until this process ends; raise
    :class:`DirectoryLocked` naming the holder when another live process holds it."""
    path = lock_path(directory)
    key = str(path)
    if key in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return path  # a filesystem without flock: no lock rather than a false "in use"
        raise DirectoryLocked(
            f"{what} '{directory}' is in use by another run: {_holder(path)} holds {path}. Wait for it to end, stop "
            f"it, or give this run another {what}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": " ".join(["lit-rlhf", *sys.argv[1:]])}).encode())
    _HELD[key] = fd
    return path


def release_all() -> None:
    """Drop every lock this process holds (the end of an in-process run; a process's end drops them anyway)."""
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
