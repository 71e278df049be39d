"""Log-probs from two kernels: how far a rollout engine's log-probs are from the trainer's, and the corrections
for it: truncated importance sampling at token or sequence level (TIS, Yao et al. 2025, "Your efficient RL
framework secretly brings you off-policy RL training"), masked importance sampling that drops tokens or sequences
whose ratio leaves a band (MIS; Liu, Li et al. 2025, "When Speed Kills Stability", as verl's rollout correction
defines its token / sequence / geometric rejection), and IcePop's two-sided token mask (the Ring-1T report).

An engine such as vLLM samples the tokens with its own kernels and precision, so the distribution the tokens
were drawn from (``engine``) is not exactly the one PPO's ratio is computed against (``trainer``). Both are
given as the sampled tokens' log-probs ``[B, R]`` with a ``[B, R]`` bool mask of the response tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_rlhf.algorithms.kl import kl_penalty
from lit_rlhf.algorithms.masked import masked_mean, masked_sum


def logprob_mismatch(engine_logprobs: Tensor, trainer_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mismatch figures over the masked tokens.

    Returns:
        ``abs_diff``: mean ``|log p_engine - log p_trainer|``; ``max_abs_diff``: its largest value;
        ``kl``: KL(engine || trainer) estimated on the engine's own samples with the unbiased, never-negative
        ``k3`` estimator (the tokens were drawn from the engine, as ``kl_penalty`` expects of its first argument).
    """
    mask = mask.bool()
    engine_logprobs, trainer_logprobs = engine_logprobs.float(), trainer_logprobs.float()
    diff = (engine_logprobs - trainer_logprobs).abs()
    return {
        "abs_diff": masked_mean(diff, mask),
        "max_abs_diff": diff[mask].max() if mask.any() else diff.new_zeros(()),
        "kl": masked_mean(kl_penalty(engine_logprobs, trainer_logprobs, "k3"), mask),
    }


def truncated_importance_weights(trainer_logprobs: Tensor, engine_logprobs: Tensor, cap: float) -> Tensor:
    """Per-token TIS weights ``min(p_trainer / p_engine, cap)`` (no gradient).

    The ratio corrects for sampling from the engine while the objective's "old" policy is the trainer's; the
    cap bounds the variance a rare token with a tiny engine probability would bring.
    """
    if not cap > 0:
        raise ValueError(f"the truncation cap must be positive, got {cap}")
    log_ratio = trainer_logprobs.detach().float() - engine_logprobs.detach().float()
    return torch.exp(log_ratio.clamp(max=math.log(cap)))  # clamped before exp: no overflow to inf


# ----------------------------------------------------------------------------------------------
# The other corrections: each a pure function of the log-ratio log(p_trainer / p_engine) and the response mask.


def engine_log_ratio(trainer_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``[B, R]`` float ``log p_trainer - log p_engine`` per response token, 0 on padding (no gradient)."""
    log_ratio = trainer_logprobs.detach().float() - engine_logprobs.detach().float()
    return torch.where(mask.bool(), log_ratio, 0.0)


def sequence_log_ratio(log_ratio: Tensor, mask: Tensor, geometric: bool = False) -> Tensor:
    """``[B]`` log of each sequence's ratio: the sum over its tokens (the product of the token ratios), or with
    ``geometric`` their mean (the log of the ratios' geometric mean, which does not grow with the length)."""
    total = masked_sum(log_ratio, mask, dim=1)
    return total / mask.sum(dim=1).clamp(min=1) if geometric else total


def sequence_truncated_importance_weights(log_ratio: Tensor, mask: Tensor, cap: float) -> Tensor:
    """``[B, R]`` sequence-level TIS: every token of a sequence gets ``min(prod_t p_trainer / p_engine, cap)``
    (the importance weight of the whole sequence, truncated), from :func:`engine_log_ratio`'s ``log_ratio``."""
    if not cap > 0:
        raise ValueError(f"the truncation cap must be positive, got {cap}")
    weight = torch.exp(sequence_log_ratio(log_ratio, mask).clamp(max=math.log(cap)))  # clamped: no overflow
    return weight[:, None].expand_as(log_ratio)


def outside_band(log_ratio: Tensor, low: float, high: float) -> Tensor:
    """Bool, same shape: where the ratio ``exp(log_ratio)`` is below ``low`` or above ``high`` (compared in log
    space, so an enormous ratio cannot overflow)."""
    if not 0 < low <= high:
        raise ValueError(f"the band needs 0 < low <= high, got [{low}, {high}]")
    return (log_ratio < math.log(low)) | (log_ratio > math.log(high))


def token_rejection_mask(log_ratio: Tensor, mask: Tensor, low: float, high: float) -> Tensor:
    """``[B, R]`` bool, the response tokens kept by token-level masked importance sampling (MIS): those whose
    ratio lies in ``[low, high]``."""
    return mask.bool() & ~outside_band(log_ratio, low, high)


def sequence_rejection_mask(log_ratio: Tensor, mask: Tensor, low: float, high: float, geometric: bool) -> Tensor:
    """``[B, R]`` bool, the response tokens of the sequences kept by sequence-level MIS: those whose sequence ratio
    (or, with ``geometric``, the geometric mean of its token ratios) lies in ``[low, high]``."""
    rejected = outside_band(sequence_log_ratio(log_ratio, mask, geometric), low, high)
    return mask.bool() & ~rejected[:, None]


def icepop_weights(log_ratio: Tensor, mask: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """IcePop (Ling Team 2025, "Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale Thinking
    Model", the Ring-1T report): ``M(k) = k`` for a token ratio ``k = p_trainer / p_engine`` in ``[low, high]``
    (the paper's alpha, beta), else 0. Returns ``(weights [B, R], kept [B, R] bool)``: the ratio where kept, 0
    elsewhere, and the kept response tokens."""
    kept = token_rejection_mask(log_ratio, mask, low, high)
    return torch.where(kept, log_ratio.exp(), 0.0), kept  # kept tokens' ratios are <= high: no overflow
