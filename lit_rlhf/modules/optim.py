"""Optimizer and LR schedule construction shared by the stages (the schedules are pure functions
in :mod:`lit_rlhf.algorithms.schedules`)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from lit_rlhf.algorithms.schedules import warmup_then_cosine
from lit_rlhf.errors import ConfigError
from lit_rlhf.precision import CompensatedAdamW, is_low_precision
from lit_rlhf.settings import OptimizerSettings


def adamw(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    *,
    low_precision: Literal["compensate", "refuse"] = "compensate",
) -> torch.optim.Optimizer:
    """AdamW on the trainable parameters only (frozen ones never reach the optimizer).

    Float32 weights (``32-true``, ``bf16-mixed``: float32 master weights, bf16 compute) get torch's fused
    AdamW. Weights stored in bfloat16/float16 (``bf16-true``, ``16-true``) would silently drop updates
    below half their rounding step, i.e. most updates at learning rates ~1e-5: ``low_precision="compensate"``
    gives them :class:`~lit_rlhf.precision.CompensatedAdamW` (Kahan-compensated, +2 bytes per weight),
    ``"refuse"`` raises instead.
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters")
    low = [p for g in groups for p in g["params"] if is_low_precision(p)]
    if low:
        dtype = str(low[0].dtype).removeprefix("torch.")
        if low_precision == "refuse":
            raise ConfigError(
                f"{len(low)} trained weight tensors are {dtype}, where AdamW updates below half a rounding step are "
                "lost; use trainer.precision bf16-mixed (float32 master weights) or the compensated optimizer"
            )
        if low_precision != "compensate":
            raise ValueError(f"low_precision must be 'compensate' or 'refuse', got {low_precision!r}")
        rank_zero_info(
            f"AdamW: {len(low)} {dtype} weight tensors are updated with Kahan compensation (no update is rounded away)"
        )
        return CompensatedAdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    # The fused kernel updates every tensor in one pass: ~5x faster than the default per-tensor loop on CPU
    # (benchmarks/BENCHMARKS.md); it exists for CPU and CUDA tensors only.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None)


def lr_schedule(optimizer: torch.optim.Optimizer, settings: OptimizerSettings, total_steps: float) -> LambdaLR:
    """The schedule of :class:`~lit_rlhf.settings.OptimizerSettings` over ``total_steps`` scheduler steps (may be
    infinite when ``min_lr_ratio`` is 1: a constant schedule after the warm-up)."""
    return LambdaLR(
        optimizer,
        partial(
            warmup_then_cosine,
            total_steps=total_steps,
            warmup_steps=settings.warmup_steps,
            start=settings.warmup_start,
            floor=settings.min_lr_ratio,
        ),
    )
