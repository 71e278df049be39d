"""How per-token losses become the loss of one optimizer step, whatever the micro-batches and ranks.

An optimizer step's batch (a minibatch) is split into micro-batches on each of several data-parallel
ranks. Averaging each micro-batch's loss and then the micro-batches' (and ranks') averages gives a
gradient that depends on how the rows fell: with responses of different lengths, a micro-batch of
short responses weighs its tokens more. The exact way is to normalise every micro-batch's *sum* by
one number computed for the whole step — :func:`step_normalizer` on each rank, summed over the
micro-batches and all-reduced over ranks — before the first backward.

Modes (the ``loss_aggregation`` setting):

- ``token_mean`` (default): every valid token of the step weighs the same; normaliser = token count.
- ``sequence_mean``: each sequence's tokens are averaged first, then the sequences; normaliser =
  count of sequences with a valid token (a sequence whose every token is masked out leaves the mean).
- ``constant``: Dr. GRPO (Liu et al. 2025): the token sum divided by ``sequences x max_length``, a
  constant per step that gives long responses no smaller per-token weight (masked tokens leave the sum, not
  the constant: it depends on no token by design).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_rlhf.algorithms.masked import masked_sum

LossAggregation = Literal["token_mean", "sequence_mean", "constant"]
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def step_normalizer(mask: Tensor, mode: LossAggregation, max_length: int | None = None) -> Tensor:
    """This micro-batch's share of the step's normaliser (sum it over micro-batches and ranks).

    Args:
        mask: ``[B, T]`` bool or 0/1, valid tokens.
        mode: One of :data:`LOSS_AGGREGATIONS`.
        max_length: The constant length of ``constant`` mode (e.g. ``max_new_tokens``).

    Returns:
        A float64 scalar tensor on ``mask``'s device.
    """
    if mode == "token_mean":
        count = (mask != 0).sum()
    elif mode == "sequence_mean":
        count = (mask != 0).any(dim=1).sum()
    elif mode == "constant":
        if not max_length or max_length < 1:
            raise ValueError(f"constant loss aggregation needs max_length >= 1, got {max_length}")
        count = torch.tensor(mask.shape[0] * max_length, device=mask.device)
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    return count.to(torch.float64)


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: LossAggregation, normalizer: Tensor | float) -> Tensor:
    """This micro-batch's part of the step loss: its per-token losses summed as ``mode`` says, over ``normalizer``.

    Summing the results of all micro-batches of a step (on all ranks, with the normaliser of the whole
    step) gives the step loss of ``mode``, exactly, however the rows were split.

    Args:
        per_token: ``[B, T]`` per-token losses (with grad).
        mask: ``[B, T]`` bool or 0/1, valid tokens.
        mode: One of :data:`LOSS_AGGREGATIONS`.
        normalizer: The step's normaliser (:func:`step_normalizer` summed over micro-batches and ranks).
    """
    if mode == "sequence_mean":
        lengths = (mask != 0).sum(dim=1).clamp(min=1).to(per_token.dtype)
        total = (masked_sum(per_token, mask, dim=1) / lengths).sum()
    elif mode in ("token_mean", "constant"):
        total = masked_sum(per_token, mask)
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    normalizer = torch.as_tensor(normalizer, device=per_token.device)
    return total / normalizer.clamp(min=1).to(per_token.dtype)
