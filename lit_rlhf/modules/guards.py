"""Guards that stop training before bad numbers reach the weights, with one line that says what tripped and where."""

from __future__ import annotations

import torch
from torch import Tensor


class TrainingStopped(RuntimeError):
    """A guard stopped training (NaN/inf, KL bound). The CLI prints it as one line and exits non-zero; the
    last good checkpoint is kept and nothing is exported over a good model."""


def check_finite(name: str, value: Tensor, where: str) -> None:
    """Stop before a NaN/inf reaches the weights (and so any checkpoint)."""
    if not torch.isfinite(value).all():
        raise TrainingStopped(
            f"{name} is NaN or inf at {where}; stopped before the optimizer step, so no checkpoint holds corrupted "
            "weights. Resume from the last checkpoint (--ckpt_path last) with a lower optimizer.learning_rate (the new "
            "value applies on resume), a smaller kl.coef or loss.max_grad_norm, or a reward that gives finite scores."
        )
