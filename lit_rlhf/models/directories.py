"""Checks that a model directory is a whole ``save_pretrained`` output (config, weights not cut short, tokenizer
files, its lit-rlhf commit marker), refused in one line naming how to write it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lit_rlhf.atomic import incomplete_files, read_marker
from lit_rlhf.models.sources import ModelSourceError, missing_source_hint

#: Weight files of a directory written by ``save_pretrained`` (one of them, or its index, must be there).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def rewrite_hint(source: str) -> str:
    """How to write ``source`` again: the command recorded in its commit marker, or the stage that writes it."""
    marker = read_marker(source) or {}
    if marker.get("command"):
        return f" It was written by `{marker['command']}`: run that again."
    return (
        missing_source_hint(source)
        or " Write it again with the command that produced it (save_pretrained writes a complete one)."
    )


def incomplete_directory(source: str, problem: str) -> ModelSourceError:
    return ModelSourceError(f"model directory '{source}' is incomplete: {problem}.{rewrite_hint(source)}")


def safetensors_problem(path: Path) -> Optional[str]:
    """Why a safetensors file cannot be complete (its header promises more bytes than the file has), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if size < 8 or header_size <= 0 or 8 + header_size > size:
                return f"{path.name} is truncated ({size} bytes)"
            header = json.loads(f.read(header_size))
    except (OSError, ValueError):
        return f"{path.name} has an unreadable header"
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_size + end != size:
        return f"{path.name} is truncated ({size} of {8 + header_size + end} bytes)"
    return None


def check_model_directory(source: str, *, weights: bool = True, tokenizer: bool = False) -> None:
    """Refuse, in one line naming the directory and how to write it again, a directory that cannot be a
    whole ``save_pretrained`` output: empty, missing or unreadable config, no weights or truncated ones,
    no tokenizer files (when ``tokenizer``), or files that differ from its lit-rlhf commit marker."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return
    if not any(path.iterdir()):
        raise incomplete_directory(source, "it is empty")
    missing = incomplete_files(path)
    if missing:
        raise incomplete_directory(source, f"{', '.join(missing[:3])} missing or cut short")
    if tokenizer:
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise incomplete_directory(source, f"no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
        return
    config = path / "config.json"
    if not config.is_file():
        if (path / "adapter_config.json").is_file():
            return  # a LoRA adapter directory: peft checks its own files
        raise incomplete_directory(source, "no config.json")
    try:
        with open(config, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        raise incomplete_directory(source, "config.json is not valid JSON") from None
    if weights:
        present = [name for name in WEIGHT_FILES if (path / name).is_file()]
        if not present:
            raise incomplete_directory(source, f"no weights ({' or '.join(WEIGHT_FILES[::2])})")
        for name in [n for n in present if n.endswith(".safetensors")] + sorted(
            p.name for p in path.glob("model-*.safetensors")
        ):
            problem = safetensors_problem(path / name)
            if problem:
                raise incomplete_directory(source, problem)
