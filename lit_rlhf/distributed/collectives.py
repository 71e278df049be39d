"""Collectives the stages call whatever the strategy: means over ranks, global masked statistics, and PPO's
explicit gradient averaging under DDP (:func:`local_backward`, :func:`sync_gradients`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Optional

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy


def attached_trainer(module: LightningModule) -> Optional[Trainer]:
    """The Trainer running ``module``, or None for a module used on its own (Lightning's public ``trainer``
    property raises then)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


@contextlib.contextmanager
def local_backward(module: LightningModule) -> Iterator[None]:
    """Backward passes whose gradients stay on their rank until :func:`sync_gradients` (DDP).

    DDP's reducer expects one backward per wrapped forward; PPO makes many backward passes and
    optimizer steps inside one ``training_step`` and calls its models directly, so under DDP the
    gradients are averaged explicitly once per optimizer step instead. Sharded strategies (FSDP2)
    reduce gradients in their own backward hooks: nothing to do.
    """
    strategy = module.trainer.strategy
    if isinstance(strategy, DDPStrategy):
        with strategy.block_backward_sync():
            yield
    else:
        yield


def sync_gradients(module: LightningModule, params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over DDP ranks (see :func:`local_backward`); a no-op otherwise.

    Every rank reduces every trainable parameter in the same order (a missing gradient counts as
    zero), so ranks whose batches left some parameter unused cannot fall out of step.
    """
    strategy = module.trainer.strategy
    if not isinstance(strategy, DDPStrategy) or strategy.world_size == 1:
        return
    for param in params:
        if not param.requires_grad:
            continue
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        dist.all_reduce(grad)
        param.grad = grad.div_(strategy.world_size)


def all_reduce_mean(value: torch.Tensor, module: LightningModule) -> torch.Tensor:
    """Mean of a tensor over all ranks (a no-op in one process, or for a module not attached to a Trainer)."""
    trainer = attached_trainer(module)
    if trainer is None:
        return value
    return trainer.strategy.reduce(value, reduce_op="mean")


def global_masked_moments(
    x: torch.Tensor, mask: torch.Tensor, module: LightningModule
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, biased variance)`` of the masked entries of ``x`` over all ranks' data, as one dataset would give."""
    mask = mask.bool()
    stats = torch.stack([x[mask].double().sum(), x[mask].double().square().sum(), mask.sum().double()])
    stats = all_reduce_mean(stats, module)  # means of sums: the ratios below are the global ones
    count = stats[2].clamp(min=1e-12)
    mean = stats[0] / count
    var = (stats[1] / count - mean.square()).clamp(min=0)
    return mean.to(x.dtype), var.to(x.dtype)
