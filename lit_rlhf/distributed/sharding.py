"""FSDP2 sharding of the stage models (:func:`shard_models`, a no-op unless the module runs under
``ModelParallelStrategy``), whether a model is sharded, and holding its full weights for a while
(:func:`gathered_weights`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Optional

import torch
from lightning.pytorch import LightningModule

from lit_rlhf.distributed.strategies import layer_classes
from lit_rlhf.models.adapters import unwrap


def shard_models(
    module: LightningModule, models: Iterable[Optional[torch.nn.Module]], *, reshard_after_forward: bool = True
) -> None:
    """``fully_shard`` each model over the data-parallel mesh: every decoder layer, then the model itself.

    Each model (trainable or frozen) becomes its own FSDP2 unit. A no-op unless the module runs under
    ``ModelParallelStrategy`` (which sets ``module.device_mesh`` before ``configure_model``).
    """
    mesh = getattr(module, "device_mesh", None)
    if mesh is None:
        return
    from torch.distributed.fsdp import fully_shard

    data_mesh = mesh["data_parallel"]
    for model in models:
        if model is None or _fsdp2_units(model):
            continue
        # A LoRA model's root unit is the HF model inside the peft wrapper: peft's generate() calls it
        # directly, and FSDP2 needs one root per model.
        root = unwrap(model)
        units = [m for m in root.modules() if type(m) in layer_classes(root)]
        for unit in units + _separable_children(root) + [root]:
            fully_shard(unit, mesh=data_mesh, reshard_after_forward=reshard_after_forward)


def _separable_children(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The HF model's direct children (backbone, heads) that share no parameter with the rest of it.

    Reward and value models call their backbone and score head directly (the head is applied at
    every position), which skips the root's FSDP2 hooks, so each must be a unit of its own. A causal
    LM with tied embeddings shares the embedding with its head: those stay together in the root unit.
    """
    hf_model = unwrap(model)
    children = [c for c in hf_model.children() if any(True for _ in c.parameters())]
    separable = []
    for child in children:
        inside = {id(p) for p in child.parameters()}
        others = {id(p) for c in children if c is not child for p in c.parameters()}
        if not inside & others:
            separable.append(child)
    return separable


def _fsdp2_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _is_fsdp1(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s weights are split across ranks (FSDP1 or FSDP2)."""
    return bool(_fsdp2_units(model)) or _is_fsdp1(model)


@contextlib.contextmanager
def gathered_weights(model: torch.nn.Module) -> Iterator[None]:
    """Hold ``model``'s full weights on every rank for the duration (one all-gather, not one per forward).

    FSDP2: unshard every unit with resharding after forward off, reshard at the end. FSDP1: the root
    FSDP wrapper's ``summon_full_params``. Unsharded models: nothing to do.
    """
    units = _fsdp2_units(model)
    if units:
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(True, recurse=False)
        return
    if _is_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = next(m for m in model.modules() if isinstance(m, FSDP))
        with FSDP.summon_full_params(root, writeback=False, recurse=True):
            yield
        return
    yield
