"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR``.

Bind the keyword arguments with ``functools.partial`` and pass the result as ``lr_lambda``::

    LambdaLR(optimizer, partial(warmup_then_cosine, total_steps=1000, floor=0.1))
"""

from __future__ import annotations

import math


def warmup_then_cosine(
    step: int, total_steps: float, warmup_steps: int = 0, start: float = 0.0, floor: float = 0.1
) -> float:
    """Linear warmup from ``start`` to 1 over ``warmup_steps``, then cosine decay to ``floor`` at ``total_steps``.

    The one schedule of every stage: SFT and RM decay to 10% with no warmup (``start`` is irrelevant);
    PPO warms up from 1/10 over 10 iterations and stays constant (``floor=1``: ``total_steps`` may be infinite).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return start + (1.0 - start) * step / warmup_steps
    if floor == 1.0:
        return 1.0
    if not warmup_steps < total_steps < float("inf"):
        raise ValueError(
            f"a decaying schedule needs warmup_steps < total_steps < inf, got {warmup_steps} and {total_steps}"
        )
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
