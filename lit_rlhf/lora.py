"""LoRA adapters (peft) for every trainable model of every stage.

A model with adapters is a ``peft.PeftModel``; its base weights are frozen, only the adapters (and,
for reward/value models, the scalar head) train. Two facts shape this module:

- PPO's KL reference is the policy itself with its adapters switched off
  (:func:`adapters_disabled`): no second copy of the base weights in memory.
- Export works from a *state dict* (gathered from any strategy, see ``lit_rlhf.distributed.export``),
  so merging is a pure function of tensors: :func:`merged_state_dict` folds ``B @ A`` into the base
  weights without touching the (possibly sharded) live model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional, Union

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.errors import ConfigError
from lit_rlhf.models.adapters import is_lora, unwrap  # noqa: F401  (is_lora, unwrap: part of this module's API)
from lit_rlhf.models.saving import drop_tied_copies

#: Adapter name peft gives the first adapter; lit-rlhf uses one adapter per model.
ADAPTER = "default"
#: Prefix of every key in a PeftModel's state dict.
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraOptions:
    """LoRA adapters for a trainable model (peft).

    Args:
        r: Rank of the adapter matrices.
        alpha: Scaling numerator: the update is ``alpha / r * B @ A``.
        dropout: Dropout on the adapter input.
        target_modules: Names of the layers that get adapters (e.g. ``[q_proj, v_proj]``), or ``all-linear``
            for every linear layer except the output head.
        export: ``merged`` writes a plain Hugging Face model with the adapters folded into the weights;
            ``adapter`` writes only the adapters (``adapter_config.json`` + ``adapter_model.safetensors``,
            loadable with ``peft.PeftModel.from_pretrained`` on the base model).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Union[list[str], str] = field(default="all-linear")
    export: Literal["merged", "adapter"] = "merged"


def apply_lora(
    model: PreTrainedModel, options: Optional[LoraOptions], *, head: Optional[str] = None
) -> torch.nn.Module:
    """Wrap ``model`` with fresh adapters, or return it unchanged when ``options`` is None.

    ``head`` names a module that trains in full next to the adapters (the scalar head of a reward or
    value model: it is new, so a frozen random head would make the model useless).
    """
    if options is None:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError('LoRA needs the peft package: pip install -e ".[lora]"') from None

    if options.r <= 0:
        raise ValueError(f"lora.r must be positive, got {options.r}")
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        modules_to_save=[head] if head else None,
    )
    was_training = model.training
    wrapped = get_peft_model(model, config)
    wrapped.train(was_training)
    return wrapped


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` as its base model (adapters off); a no-op for a model without adapters."""
    if not is_lora(model):
        yield model
        return
    with model.disable_adapter():
        yield model


def _lora_scaling(config) -> float:
    rank = config.r
    return config.lora_alpha / (rank**0.5 if getattr(config, "use_rslora", False) else rank)


def merged_state_dict(state: dict[str, Tensor], config) -> dict[str, Tensor]:
    """The plain model's state dict from a PeftModel's: ``W + scaling * B @ A``, heads' trained copies.

    ``state`` uses PeftModel keys (``base_model.model.<name>.base_layer.weight``, ``...lora_A.default.weight``,
    ``<head>.modules_to_save.default.weight``); the result uses the base model's own keys.
    """
    scaling = _lora_scaling(config)
    merged: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        if ".lora_" in name or ".original_module." in name:
            continue  # folded into the base weight below / replaced by the trained copy
        if f".modules_to_save.{ADAPTER}." in name:
            merged[name.replace(f".modules_to_save.{ADAPTER}.", ".")] = value
            continue
        if ".base_layer." in name:
            layer, param = name.split(".base_layer.")
            if param == "weight":
                a = state[f"{PEFT_PREFIX}{layer}.lora_A.{ADAPTER}.weight"].float()
                b = state[f"{PEFT_PREFIX}{layer}.lora_B.{ADAPTER}.weight"].float()
                delta = (b @ a) * scaling
                if getattr(config, "fan_in_fan_out", False):
                    delta = delta.T  # Conv1D layers (GPT-2) store weights transposed
                value = (value.float() + delta).to(value.dtype)
            name = f"{layer}.{param}"
        merged[name] = value
    return merged


def save_lora_directory(
    model: torch.nn.Module,
    tokenizer: Optional[PreTrainedTokenizerBase],
    out_dir: Union[str, Path],
    state: dict[str, Tensor],
    mode: Literal["merged", "adapter"],
) -> Path:
    """Write a peft model from its full state dict: merged into a plain HF directory, or adapters only."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[ADAPTER]
    if mode == "merged":
        base = unwrap(model)
        base.save_pretrained(out, state_dict=drop_tied_copies(base, merged_state_dict(state, config)))
    else:
        model.save_pretrained(out, state_dict=state)  # peft keeps only the adapter (and head) entries
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def trainable_parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
