"""What PPO does with an engine's own log-probs (an engine whose kernels are not the trainer's, such as vLLM):
measure how far they are from the trainer's every rollout, and optionally correct with truncated importance
sampling (:mod:`lit_rlhf.algorithms.engine_mismatch`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from lit_rlhf.algorithms.engine_mismatch import logprob_mismatch, truncated_importance_weights
from lit_rlhf.algorithms.masked import masked_mean
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import check_option


@dataclass(frozen=True)
class RolloutCorrectionSettings:
    """Off-policy correction for an engine whose log-probs are not the trainer's (``VLLMEngine``).

    Attributes:
        truncated_is_cap: Truncated importance sampling (Yao et al. 2025): each token's advantage x
            ``min(p_trainer / p_engine, cap)``; >= 1 (a cap below 1 would down-weight every token, even where the
            kernels agree). Unset: off.
    """

    truncated_is_cap: Optional[float] = None

    def __post_init__(self) -> None:
        check_option("correction.truncated_is_cap", self.truncated_is_cap, min=1)


@dataclass(frozen=True)
class EngineCorrection:
    """What :func:`engine_logprob_correction` found: per-token advantage weights to apply (None: none) and the
    ``engine/*`` metrics to log."""

    weights: Optional[Tensor] = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


def engine_logprob_correction(episodes: Episodes, settings: RolloutCorrectionSettings) -> EngineCorrection:
    """Compare the log-probs the engine recorded for ``episodes`` (``engine_logprobs``, if it did) with the trainer's
    (``logprobs``, the PPO ratio's "old" log-probs).

    Metrics: ``engine/logprob_abs_diff`` (mean |delta log p| over response tokens), ``engine/logprob_max_abs_diff``,
    ``engine/kl`` (KL(engine || trainer) on the sampled tokens) and, with TIS on, the mean ``engine/tis_weight`` and
    the fraction of tokens at the cap (``engine/tis_capped``). With ``truncated_is_cap`` set, the weights are
    ``min(p_trainer / p_engine, cap)`` per token: multiplying each token's advantage by its weight scales the clipped
    surrogate of the token by exactly the weight (it is positive), as TIS prescribes, and leaves the value targets
    alone. Nothing for an engine that records no log-probs of its own (the HF engine).
    """
    engine_logprobs = episodes.engine_logprobs
    if engine_logprobs is None:
        return EngineCorrection()
    if engine_logprobs.shape != episodes.logprobs.shape:
        raise RuntimeError(
            f"the engine recorded log-probs of shape {tuple(engine_logprobs.shape)} for episodes "
            f"of {tuple(episodes.logprobs.shape)} response tokens"
        )
    mask, trainer_logprobs = episodes.response_mask, episodes.logprobs
    engine_logprobs = engine_logprobs.to(trainer_logprobs.device)
    metrics = {
        f"engine/{'logprob_' if name != 'kl' else ''}{name}": value
        for name, value in logprob_mismatch(engine_logprobs, trainer_logprobs, mask).items()
    }
    cap = settings.truncated_is_cap
    if cap is None:
        return EngineCorrection(None, metrics)
    weights = truncated_importance_weights(trainer_logprobs, engine_logprobs, cap)
    metrics["engine/tis_weight"] = masked_mean(weights, mask)
    capped = (trainer_logprobs - engine_logprobs).float() >= math.log(cap)  # not weights == cap: rounding
    metrics["engine/tis_capped"] = masked_mean(capped.float(), mask)
    return EngineCorrection(weights, metrics)
