"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR``.

Bind the keyword arguments with ``functools.partial`` and pass the result as ``lr_lambda``::

    LambdaLR(optimizer, partial(cosine_with_floor, total_steps=1000, floor=0.1))
"""

from __future__ import annotations

import math


def cosine_with_floor(step: int, total_steps: int, warmup_steps: int = 0, floor: float = 0.1) -> float:
    """Linear warmup from 0, then cosine decay from 1 to ``floor`` at ``total_steps``, then ``floor``.

    InstructGPT SFT and RM: cosine to 10% of the peak LR, no warmup.

    Args:
        step: Scheduler step (0-based).
        total_steps: Step at which the decay reaches ``floor``.
        warmup_steps: Steps of linear warmup; 0 starts at the peak.
        floor: Final multiplier, as a fraction of the peak.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if step < warmup_steps:
        return step / warmup_steps
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_then_cosine(
    step: int, total_steps: float, warmup_steps: int = 0, start: float = 0.0, floor: float = 0.1
) -> float:
    """Linear warmup from ``start`` to 1 over ``warmup_steps``, then cosine decay to ``floor`` at ``total_steps``.

    The one schedule of every stage: SFT and RM decay to 10% with no warmup (``start`` is irrelevant);
    PPO warms up from 1/10 over 10 iterations and stays constant (``floor=1``: ``total_steps`` may be infinite).
    Equal, value for value, to :func:`cosine_with_floor` (``start=0``) and :func:`warmup_then_constant` (``floor=1``).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return start + (1.0 - start) * step / warmup_steps
    if floor == 1.0:
        return 1.0
    if not warmup_steps < total_steps < float("inf"):
        raise ValueError(f"a decaying schedule needs warmup_steps < total_steps < inf, got {warmup_steps} and {total_steps}")
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_then_constant(step: int, warmup_steps: int = 10, start: float = 0.1) -> float:
    """Linear warmup from ``start`` to 1 over ``warmup_steps``, then 1.

    InstructGPT PPO: constant LR after 10 iterations of warmup from 1/10 of it.

    Args:
        step: Scheduler step (0-based).
        warmup_steps: Steps to reach the full LR; 0 starts at it.
        start: Multiplier at step 0.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps
