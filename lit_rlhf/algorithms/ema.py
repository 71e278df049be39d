"""Exponential moving average of model weights (InstructGPT PPO keeps one with decay 0.992)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def ema_update(ema_params: Iterable[Tensor], params: Iterable[Tensor], decay: float) -> None:
    """In place, for each pair: ``ema = decay * ema + (1 - decay) * param``.

    The EMA tensors keep their own dtype and device (e.g. a float32 copy of bf16 weights).

    Args:
        ema_params: The averaged tensors, updated in place.
        params: The live tensors, in the same order.
        decay: Weight of the old average, in [0, 1].

    Raises:
        ValueError: If ``decay`` is outside [0, 1] or the two iterables differ in length or shapes.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    ema_params, params = list(ema_params), list(params)
    if len(ema_params) != len(params):
        raise ValueError(f"{len(ema_params)} EMA tensors but {len(params)} parameters")
    for i, (ema, param) in enumerate(zip(ema_params, params)):
        if ema.shape != param.shape:
            raise ValueError(f"tensor {i}: EMA shape {tuple(ema.shape)} != parameter shape {tuple(param.shape)}")
    for ema, param in zip(ema_params, params):
        ema.lerp_(param.to(device=ema.device, dtype=ema.dtype), 1.0 - decay)
