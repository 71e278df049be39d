"""Outputs that appear whole or not at all: a killed run never leaves a half-written file or model directory.

Everything is written beside its target under a temporary name and moved into place with
``os.replace`` once complete. A model directory also gets a commit marker listing its files and
their sizes, so a later truncation (a copy cut short, a full disk) is detected when it is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional

#: Written last into every model directory lit-rlhf exports: {"files": {name: size}, "command": ...}.
COMMIT_MARKER = "lit_rlhf_export.json"


def _temp_beside(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


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
    for stale in target.parent.glob(f".{target.name}.*-*"):  # left by a run killed mid-export
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    temp = _temp_beside(target, "tmp")
    temp.mkdir()
    try:
        yield temp
        files = {p.relative_to(temp).as_posix(): p.stat().st_size for p in sorted(temp.rglob("*")) if p.is_file()}
        with open(temp / COMMIT_MARKER, "w", encoding="utf-8") as f:
            json.dump({"files": files, "command": command}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = _temp_beside(target, "old")
        if target.exists():
            os.replace(target, old)
        os.replace(temp, target)
        shutil.rmtree(old, ignore_errors=True)
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
