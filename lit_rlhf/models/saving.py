"""Writing a model as a Hugging Face directory (atomically, with the command that wrote it in its marker)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.atomic import atomic_directory
from lit_rlhf.models.adapters import unwrap


def drop_tied_copies(model: PreTrainedModel, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the entries of weights tied to another (e.g. ``lm_head.weight`` tied to the embedding).

    A gathered (FSDP) state dict holds tied weights as separate copies, which ``save_pretrained``
    would write twice; the model re-ties them on load.
    """
    tied = getattr(unwrap(model), "all_tied_weights_keys", None) or {}
    return {k: v for k, v in state.items() if not (k in tied and tied[k] in state)}


def save_hf_directory(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    state_dict: dict[str, Tensor] | None = None,
) -> Path:
    """``save_pretrained`` (config, safetensors, tokenizer) so the next stage or any HF tool loads it by path.

    ``state_dict`` replaces the model's own weights in the files (gathered, EMA or best weights). The
    directory is written beside ``out_dir`` and moved into place only when complete (:func:`atomic_directory`).
    """
    with atomic_directory(out_dir, command=current_command()) as out:
        model.save_pretrained(out, state_dict=None if state_dict is None else drop_tied_copies(model, state_dict))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return Path(out_dir)


def current_command() -> Optional[str]:
    """This process's command line when it is the ``lit-rlhf`` command (recorded in the export's commit marker)."""
    if not sys.argv or Path(sys.argv[0]).name != "lit-rlhf":
        return None
    return " ".join(["lit-rlhf", *sys.argv[1:]])
