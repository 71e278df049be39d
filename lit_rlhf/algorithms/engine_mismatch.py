"""Log-probs from two kernels: how far a rollout engine's log-probs are from the trainer's, and truncated
importance sampling (TIS, Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training") to correct for it.

An engine such as vLLM samples the tokens with its own kernels and precision, so the distribution the tokens
were drawn from (``engine``) is not exactly the one PPO's ratio is computed against (``trainer``). Both are
given as the sampled tokens' log-probs ``[B, R]`` with a ``[B, R]`` bool mask of the response tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_rlhf.algorithms.kl import kl_penalty
from lit_rlhf.algorithms.masked import masked_mean


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
