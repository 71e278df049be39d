"""What PPO does with an engine's own log-probs (an engine whose kernels are not the trainer's, such as vLLM):
log how far they are from the trainer's every rollout, and optionally correct with truncated importance
sampling (:mod:`lit_rlhf.algorithms.engine_mismatch`)."""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from lit_rlhf.algorithms.engine_mismatch import logprob_mismatch, truncated_importance_weights
from lit_rlhf.algorithms.masked import masked_mean
from lit_rlhf.engines.base import RolloutEngine
from lit_rlhf.errors import check_option


def check_truncated_is_cap(cap: Optional[float]) -> None:
    """Unset (TIS off) or >= 1: a cap below 1 would down-weight every token, even where the kernels agree."""
    check_option("truncated_is_cap", cap, min=1)


def engine_logprob_correction(engine: RolloutEngine, rollout, truncated_is_cap: Optional[float]) -> dict[str, Tensor]:
    """Take the log-probs ``engine`` recorded for ``rollout``'s tokens (if it did) and compare them with the trainer's
    (``rollout.logprobs``, the PPO ratio's "old" log-probs).

    Returns the ``engine/*`` metrics to log: ``logprob_abs_diff`` (mean |delta log p| over response tokens),
    ``logprob_max_abs_diff``, ``kl`` (KL(engine || trainer) on the sampled tokens) and, with TIS on, the mean
    ``tis_weight`` and the fraction of tokens at the cap (``tis_capped``). With ``truncated_is_cap`` set, each
    token's advantage is multiplied by its weight ``min(p_trainer / p_engine, cap)``: that scales the clipped
    surrogate of the token by exactly the weight (it is positive), as TIS prescribes, and leaves the value
    targets alone. Nothing happens for an engine that records no log-probs of its own (the HF engine).
    """
    engine_logprobs, engine.sampled_logprobs = engine.sampled_logprobs, None  # consumed once, never reused
    if engine_logprobs is None:
        return {}
    if engine_logprobs.shape != rollout.logprobs.shape:
        raise RuntimeError(f"the engine recorded log-probs of shape {tuple(engine_logprobs.shape)} for a rollout "
                           f"of {tuple(rollout.logprobs.shape)} response tokens")
    mask = rollout.response_mask
    engine_logprobs = engine_logprobs.to(rollout.logprobs.device)
    metrics = {f"engine/{'logprob_' if name != 'kl' else ''}{name}": value
               for name, value in logprob_mismatch(engine_logprobs, rollout.logprobs, mask).items()}
    if truncated_is_cap is not None:
        weights = truncated_importance_weights(rollout.logprobs, engine_logprobs, truncated_is_cap)
        rollout.advantages = rollout.advantages * weights.to(rollout.advantages.dtype)
        metrics["engine/tis_weight"] = masked_mean(weights, mask)
        capped = (rollout.logprobs - engine_logprobs).float() >= math.log(truncated_is_cap)  # not weights == cap: rounding
        metrics["engine/tis_capped"] = masked_mean(capped.float(), mask)
    return metrics
