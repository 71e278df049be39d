"""The next-token loss of SFT and of PPO-ptx's pretraining term."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def next_token_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of predicting ``labels[:, t+1]`` from ``logits[:, t]``.

    ``labels`` holds ``-100`` where no loss is taken (prompt tokens, padding). Returns the mean
    over trained tokens and their count, so callers can weight means across batches exactly.
    """
    shifted_logits = logits[:, :-1].flatten(0, 1).float()
    shifted_labels = labels[:, 1:].flatten()
    n_tokens = (shifted_labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n_tokens.clamp(min=1), n_tokens
