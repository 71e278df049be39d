"""Everything that depends on the distributed strategy lives here, so algorithm code never asks
which strategy runs it: full-weight gathering for export, and helpers for collective ops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.models import save_hf_directory


def full_state_dict(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's full (unsharded) state dict, on CPU, complete on global rank 0.

    A collective: every rank must call it. Lightning's strategies each know how to gather their
    own sharding (FSDP gathers to rank 0; DDP and single device return the local weights).
    """
    strategy = trainer.strategy
    from lightning.pytorch.strategies import ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(strategy.lightning_module, options=options)
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
) -> Optional[Path]:
    """Write ``module.<attribute>`` as a Hugging Face directory from global rank 0.

    Every rank must call this (gathering sharded weights is collective). ``state`` overrides the
    weights written (e.g. EMA weights or a best checkpoint's), given as the module's state dict.
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
        path = save_hf_directory(model, tokenizer, out_dir, state_dict=model_state)
    trainer.strategy.barrier("export_hf")
    return path


def all_reduce_mean(value: torch.Tensor, module: LightningModule) -> torch.Tensor:
    """Mean of a tensor over all ranks (a no-op in one process)."""
    return module.trainer.strategy.reduce(value, reduce_op="mean")


def broadcast_object(obj: Any, module: LightningModule) -> Any:
    return module.trainer.strategy.broadcast(obj, src=0)
