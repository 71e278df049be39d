"""Outputs that appear whole or not at all: a killed run never leaves a half-written file or model directory.

Everything is written beside its target under a temporary name and moved into place with
``os.replace`` once complete. A model directory also gets a commit marker listing its files and
their sizes, so a later truncation (a copy cut short, a full disk) is detected when it is loaded.

A directory replaces an existing one by an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), so the
target is never missing. Where the filesystem cannot exchange, two renames are used (target aside to
``.NAME.old-PID``, then ``.NAME.tmp-PID`` into place); a kill between them is repaired by
:func:`recover_directory` (the ``lit-rlhf`` command runs it for every path of its config before the
models load): the marked complete new copy is moved into place, else the previous one back.
Temporaries are only ever deleted when the process that wrote them is dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional

#: Written last into every model directory lit-rlhf exports: {"files": {name: size}, "command": ...}.
COMMIT_MARKER = "lit_rlhf_export.json"


def _temp_beside(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def temporaries(target: Path) -> list[tuple[Path, str, int]]:
    """``(path, kind, pid)`` of every ``.NAME.tmp-PID`` / ``.NAME.old-PID`` beside ``target``."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)$")
    found = []
    if target.parent.is_dir():
        for path in target.parent.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((path, match.group(1), int(match.group(2))))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _swap_into_place(temp: Path, target: Path) -> None:
    """``temp`` becomes ``target``; the previous ``target`` (if any) is deleted. ``target`` is never missing
    where the filesystem exchanges atomically; elsewhere :func:`recover_directory` repairs a kill in between."""
    if target.exists() and _exchange(temp, target):
        _remove(temp)  # now the previous directory
        return
    old = _temp_beside(target, "old")
    if target.exists():
        os.replace(target, old)
    os.replace(temp, target)
    _remove(old)


def _complete(directory: Path) -> bool:
    return (
        read_marker(directory) is not None and (directory / COMMIT_MARKER).is_file() and not incomplete_files(directory)
    )


def recover_directory(path: str | Path) -> Optional[str]:
    """Repair ``path`` left missing by a process killed between the two renames of an export: the marked
    complete new copy (``.NAME.tmp-PID``) is moved into place, else the previous one (``.NAME.old-PID``).
    Only temporaries of dead processes are used. Returns a line saying what was restored, or None."""
    target = Path(path).expanduser()
    if target.exists() or target.is_symlink() or not target.parent.is_dir():
        return None
    dead = [(p, kind, pid) for p, kind, pid in temporaries(target) if not pid_alive(pid) and p.is_dir()]
    for wanted in ("tmp", "old"):
        for candidate, kind, _pid in sorted(dead, key=lambda t: t[0].stat().st_mtime, reverse=True):
            if kind == wanted and (kind == "old" or _complete(candidate)):
                os.replace(candidate, target)
                what = "the complete new export" if kind == "tmp" else "the previous export"
                return f"{target}: restored {what} from {candidate.name} (a run was killed while replacing it)"
    return None


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; it replaces ``path`` only when the block completes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(target, "tmp")
    try:
        with open(temp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path, command: Optional[str] = None) -> Iterator[Path]:
    """A temporary directory beside ``path`` to write into; when the block completes it gets the commit
    marker and replaces ``path`` (an existing directory is moved aside first and then deleted).

    ``command`` (the command that writes this directory) goes into the marker, so an error about the
    directory can say how to write it again.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)  # a previous run killed between two renames
    for stale, _, pid in temporaries(target):  # left by a run killed mid-export; a live run's are its own
        if not pid_alive(pid):
            _remove(stale)
    temp = _temp_beside(target, "tmp")
    temp.mkdir()
    try:
        yield temp
        files = {p.relative_to(temp).as_posix(): p.stat().st_size for p in sorted(temp.rglob("*")) if p.is_file()}
        with open(temp / COMMIT_MARKER, "w", encoding="utf-8") as f:
            json.dump({"files": files, "command": command}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(temp, target)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def read_marker(directory: str | Path) -> Optional[dict]:
    """The commit marker of a directory lit-rlhf exported, or None when it has none (another tool wrote it)."""
    marker = Path(directory) / COMMIT_MARKER
    if not marker.is_file():
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {"files": None, "command": None}
    return data if isinstance(data, dict) else {"files": None, "command": None}


def incomplete_files(directory: str | Path) -> list[str]:
    """Files the commit marker lists that are missing or have another size (empty when complete or unmarked)."""
    marker = read_marker(directory)
    if marker is None:
        return []
    files = marker.get("files")
    if not isinstance(files, dict):
        return [COMMIT_MARKER]
    root = Path(directory)
    return [name for name, size in files.items() if not (root / name).is_file() or (root / name).stat().st_size != size]
