"""Generalised advantage estimation (Schulman et al. 2016) over padded response tokens."""

from __future__ import annotations

import torch
from torch import Tensor


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns for a batch of episodes, one per row.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V`` and ``A`` after the last valid token taken as 0 (the episode ends there).
    InstructGPT uses ``gamma = 1`` (no discount).

    Args:
        rewards: ``[B, T]`` per-token rewards.
        values: ``[B, T]`` value estimates.
        mask: ``[B, T]`` bool or 0/1, marks each row's valid response tokens (one contiguous run,
            normally right-padded).
        gamma: Discount.
        lam: GAE lambda; 1 gives Monte-Carlo returns, 0 one-step TD.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` in float32 (or float64), 0 outside the mask;
        ``returns = advantages + values``.

    Raises:
        ValueError: On mismatched shapes or a row whose valid tokens are not contiguous.
    """
    if rewards.dim() != 2 or values.shape != rewards.shape or mask.shape != rewards.shape:
        raise ValueError(
            f"rewards, values and mask must all be [B, T]; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    bool_mask = mask if mask.dtype == torch.bool else mask != 0
    run_starts = bool_mask[:, :1].sum(dim=1) + (bool_mask[:, 1:] & ~bool_mask[:, :-1]).sum(dim=1)
    gapped_rows = (run_starts > 1).nonzero().flatten().tolist()
    if gapped_rows:
        raise ValueError(f"rows {gapped_rows} of the mask have gaps; valid tokens must be contiguous")

    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    # Zeroing outside the mask makes the value after the last valid token 0 and keeps the
    # running advantage at 0 through the right padding, so the loop needs no special cases.
    rewards = torch.where(bool_mask, rewards.to(dtype), zero)
    values = torch.where(bool_mask, values.to(dtype), zero)

    num_steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(num_steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = torch.where(bool_mask, advantages, zero)
    returns = torch.where(bool_mask, advantages + values, zero)
    return advantages, returns
