"""Whether a model carries LoRA adapters, and the Hugging Face model under them."""

from __future__ import annotations

import sys

import torch


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model with LoRA adapters (:mod:`lit_rlhf.lora`). peft is optional (the ``lora``
    extra): a model can only be a peft model if peft was imported, so without it nothing is imported here."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under a peft wrapper (its layers carry the adapters), else ``model``."""
    return model.get_base_model() if is_lora(model) else model
