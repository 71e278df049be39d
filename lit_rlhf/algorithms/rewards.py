"""Turning sequence scores into per-token rewards (PPO) or per-sequence advantages (RLOO, GRPO)."""

from __future__ import annotations

import torch
from torch import Tensor


def per_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """InstructGPT eq. 2 as per-token rewards: -beta * KL on every response token, plus the score at the last.

    Args:
        scores: ``[B]`` reward-model score of each sequence.
        kl: ``[B, T]`` per-token KL estimate (see :func:`~lit_rlhf.algorithms.kl.kl_penalty`).
        mask: ``[B, T]`` bool or 0/1, marks the valid response tokens (right-padded).
        beta: KL coefficient.

    Returns:
        ``[B, T]`` float rewards, 0 outside the mask.

    Raises:
        ValueError: If a row has no valid token (its score would have nowhere to go).
    """
    if kl.dim() != 2 or mask.shape != kl.shape or scores.shape != kl.shape[:1]:
        raise ValueError(
            f"expected scores [B], kl [B, T], mask [B, T]; got {tuple(scores.shape)}, "
            f"{tuple(kl.shape)}, {tuple(mask.shape)}"
        )
    bool_mask = mask if mask.dtype == torch.bool else mask != 0
    empty_rows = (~bool_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(f"rows {empty_rows} have no valid response token to put the score on")
    dtype = torch.promote_types(torch.promote_types(kl.dtype, scores.dtype), torch.float32)
    rewards = torch.where(bool_mask, -beta * kl.to(dtype), torch.zeros((), dtype=dtype, device=kl.device))
    # Position of the last valid token of each row (highest index where the mask is set).
    positions = torch.arange(kl.shape[1], device=kl.device).expand_as(bool_mask)
    last = torch.where(bool_mask, positions, -1).amax(dim=1)
    rows = torch.arange(kl.shape[0], device=kl.device)
    return rewards.index_put((rows, last), scores.to(dtype), accumulate=True)


def _grouped(scores: Tensor, group_size: int) -> Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(f"batch of {scores.shape[0]} scores is not divisible by group_size {group_size}")
    return scores.reshape(-1, group_size)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out: each sample's score minus the mean score of the other samples of its prompt.

    Args:
        scores: ``[B]`` scores, the ``group_size`` samples of each prompt next to each other.
        group_size: Samples per prompt (>= 2).

    Returns:
        ``[B]`` advantages, same layout.
    """
    groups = _grouped(scores, group_size)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def grpo_advantages(scores: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO: each sample's score standardised within its prompt's group, (s - mean) / (std + eps).

    ``std`` is the unbiased (n - 1) standard deviation of the group.

    Args:
        scores: ``[B]`` scores, the ``group_size`` samples of each prompt next to each other.
        group_size: Samples per prompt (>= 2).
        eps: Keeps a group of equal scores at advantage 0 instead of NaN.

    Returns:
        ``[B]`` advantages, same layout.
    """
    groups = _grouped(scores, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)
