"""Full weights from any sharding: gathered one decoder layer at a time (:func:`full_tensors_by_layer`), as one
state dict on rank 0 (:func:`full_state_dict`), and written as a Hugging Face directory (:func:`export_hf`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.atomic import atomic_directory
from lit_rlhf.lora import is_lora, save_lora_directory
from lit_rlhf.models.saving import current_command, save_hf_directory


def full_tensors_by_layer(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """``model``'s state dict as full (unsharded) tensors, one decoder layer at a time (then what is outside the
    layers).

    A sharded (FSDP2 DTensor) entry is all-gathered only when its layer is reached, so at most one layer's full
    tensors are held at once, never the whole model. A collective under FSDP2: every rank must iterate it to the
    end. Unsharded models (one device, DDP) yield their own tensors, detached. Keys are ``model.state_dict()``'s.
    """
    from torch.distributed.tensor import DTensor

    def full(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()

    state = model.state_dict()  # sharded tensors stay sharded here: nothing is gathered yet
    layers: dict[str, list[str]] = {}
    for key in state:
        layers.setdefault(_layer_prefix(key), []).append(key)
    rest = layers.pop("", [])
    for keys in [*layers.values(), rest]:
        yield {key: full(state[key]) for key in keys}


def _layer_prefix(key: str) -> str:
    """``...layers.3.`` for a key inside a numbered layer list (``h.3.`` in GPT-2), else ``""``."""
    parts = key.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit() and parts[i - 1] in ("layers", "h", "layer", "blocks"):
            return ".".join(parts[: i + 1]) + "."
    return ""


def full_state_dict(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's full (unsharded) state dict, on CPU, complete on global rank 0.

    A collective: every rank must call it. Full weights are gathered whatever checkpoint format the
    strategy writes (``state_dict_type: sharded`` checkpoints still export full weights).
    """
    strategy = trainer.strategy
    if isinstance(strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(strategy.lightning_module, options=options)
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # Offloading is for GPU memory; on CPU devices it frees the storage the clones are read from.
        config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
        with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
            return {k: v.cpu() for k, v in strategy.model.state_dict().items()}
    return strategy.lightning_module_state_dict()


def submodule_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state`` under ``prefix.`` with the prefix removed (one model of a module)."""
    start = prefix + "."
    return {k[len(start) :]: v.detach().cpu() for k, v in state.items() if k.startswith(start)}


def export_hf(
    module: LightningModule,
    attribute: str,
    tokenizer: Optional[PreTrainedTokenizerBase],
    out_dir: str | Path,
    state: Optional[dict[str, torch.Tensor]] = None,
    lora_export: Literal["merged", "adapter"] = "merged",
) -> Optional[Path]:
    """Write ``module.<attribute>`` as a Hugging Face directory from global rank 0.

    Every rank must call this (gathering sharded weights is collective). ``state`` overrides the
    weights written (e.g. EMA weights or a best checkpoint's), given as the module's state dict.
    A model with LoRA adapters is written merged into its base weights, or as adapters only
    (``lora_export``).
    """
    trainer = module.trainer
    if state is None:
        state = full_state_dict(trainer)
    path = None
    if trainer.is_global_zero:
        model: PreTrainedModel = getattr(module, attribute)
        model_state = submodule_state(state, attribute)
        if not model_state:
            raise RuntimeError(f"no weights under '{attribute}.' in the state dict; cannot export {out_dir}")
        if is_lora(model):
            with atomic_directory(out_dir, command=current_command()) as temp:  # moved into place only when complete
                save_lora_directory(model, tokenizer, temp, model_state, lora_export)
            path = Path(out_dir)
        else:
            path = save_hf_directory(model, tokenizer, out_dir, state_dict=model_state)
    trainer.strategy.barrier("export_hf")
    return path
