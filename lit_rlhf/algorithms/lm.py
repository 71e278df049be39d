"""The next-token loss of SFT and of PPO-ptx's pretraining term."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def labelled_positions(labels: Tensor) -> Tensor:
    """The positions ``t`` whose logits some row's loss reads (``labels[:, t + 1]`` is labelled in any row).

    Given to a Hugging Face model as ``logits_to_keep``, the LM head (and the float32 loss) runs only
    there: prompt-only columns, where a vocabulary-wide row of logits would be computed and thrown
    away, are skipped. The model's own head code runs, so soft-capping or logit scaling still apply.
    """
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().flatten()


def next_token_loss(logits: Tensor, labels: Tensor, positions: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of predicting ``labels[:, t+1]`` from the logits at ``t``.

    ``labels`` holds ``-100`` where no loss is taken (prompt tokens, padding). ``logits`` covers every
    position, or only ``positions`` (:func:`labelled_positions`), in that order. Returns the mean over
    trained tokens and their count, so callers can weight means across batches exactly.
    """
    if positions is None:
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    else:
        shifted_logits, shifted_labels = logits, labels[:, positions + 1]
    shifted_logits = shifted_logits.flatten(0, 1).float()
    shifted_labels = shifted_labels.flatten()
    n_tokens = (shifted_labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n_tokens.clamp(min=1), n_tokens
