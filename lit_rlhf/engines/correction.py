"""What PPO does with an engine's own log-probs (an engine whose kernels are not the trainer's, such as vLLM):
measure how far they are from the trainer's every rollout, and optionally correct for it with importance weights
and masks (:mod:`lit_rlhf.algorithms.engine_mismatch`).

A weight multiplies each token's advantage; a mask removes tokens from the update's losses and from their
normaliser (``Episodes.correction_mask``, read by the update as ``Episodes.loss_mask``): a rejected token is treated
as if it had not been sampled, so the kept tokens of a step keep the weight they would have without it (verl's
rollout correction does the same with its rejection mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

from torch import Tensor

from lit_rlhf.algorithms.engine_mismatch import (
    engine_log_ratio,
    icepop_weights,
    logprob_mismatch,
    sequence_rejection_mask,
    sequence_truncated_importance_weights,
    token_rejection_mask,
    truncated_importance_weights,
)
from lit_rlhf.algorithms.masked import masked_mean
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import ConfigError, check_option

CorrectionMask = Literal["token", "sequence", "geometric", "icepop"]


@dataclass(frozen=True)
class RolloutCorrectionSettings:
    """Off-policy correction for an engine whose log-probs are not the trainer's (``VLLMEngine``), with the ratio
    ``p_trainer / p_engine`` of each sampled token. Weights and masks combine: a mask removes tokens from the loss,
    a weight scales the advantages of the tokens left.

    Attributes:
        truncated_is_cap: Truncated importance sampling (TIS, Yao et al. 2025): each token's advantage x
            ``min(ratio, cap)``; >= 1 (a cap below 1 would down-weight every token, even where the kernels agree).
            Unset: no weights.
        truncated_is_level: ``token``: each token's own ratio (Yao et al.); ``sequence``: every token of a sequence
            weighted by the product of its ratios, ``min(prod_t ratio_t, cap)`` (sequence-level TIS, as verl's
            ``rollout_is: sequence``). Needs ``truncated_is_cap``.
        mask: Masked importance sampling (MIS): remove from the update what lies outside ``[mask_low, mask_high]``.
            ``token``: each token by its ratio; ``sequence``: whole sequences by their ratio ``prod_t ratio_t``;
            ``geometric``: whole sequences by the geometric mean of their token ratios (length-independent; verl's
            ``rollout_rs: token / sequence / geometric``); ``icepop``: IcePop's two-sided token mask (Ring-1T
            report): tokens outside the band removed, each kept token's advantage x its ratio. Unset: no mask.
        mask_low: Lower end of the band, in (0, 1]. Default: ``1 / mask_high``.
        mask_high: Upper end of the band, >= 1; required with ``mask``. Typical: ``token``/``icepop`` 2-5 (IcePop
            used [0.5, 5]), ``sequence`` 2-10, ``geometric`` 1.001-1.01.
    """

    truncated_is_cap: Optional[float] = None
    truncated_is_level: Literal["token", "sequence"] = "token"
    mask: Optional[CorrectionMask] = None
    mask_low: Optional[float] = None
    mask_high: Optional[float] = None

    @property
    def weights_bounded(self) -> bool:
        """Whether these settings weight each token by a bounded ``p_trainer / p_engine`` (truncated IS or IcePop):
        what an update on stale samples needs (AReaL's decoupled loss)."""
        return self.truncated_is_cap is not None or self.mask == "icepop"

    def __post_init__(self) -> None:
        check_option("correction.truncated_is_cap", self.truncated_is_cap, min=1)
        check_option("correction.mask_low", self.mask_low, min=0, max=1, min_open=True)
        check_option("correction.mask_high", self.mask_high, min=1)
        choices = {"truncated_is_level": ("token", "sequence"), "mask": (None, *get_args(CorrectionMask))}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                named = ", ".join(str(choice) for choice in allowed if choice)
                raise ConfigError(f"correction.{name} must be one of {named}, got {getattr(self, name)!r}")
        if self.truncated_is_level != "token" and self.truncated_is_cap is None:
            raise ConfigError(
                f"correction.truncated_is_level={self.truncated_is_level} needs correction.truncated_is_cap (>= 1)"
            )
        if self.mask is None and (self.mask_low, self.mask_high) != (None, None):
            raise ConfigError("correction.mask_low / mask_high set without correction.mask: set the mask level too")
        if self.mask is not None and self.mask_high is None:
            raise ConfigError(f"correction.mask={self.mask} needs correction.mask_high (>= 1), the band's upper end")
        if self.mask == "icepop" and self.truncated_is_cap is not None:
            raise ConfigError(
                "correction.mask=icepop already weights each kept token by its ratio: unset "
                "correction.truncated_is_cap, or use correction.mask: token with it"
            )

    @property
    def band(self) -> tuple[float, float]:
        """``(low, high)`` of the mask's band."""
        high = self.mask_high or 1.0
        return (self.mask_low if self.mask_low is not None else 1 / high), high


@dataclass(frozen=True)
class EngineCorrection:
    """What :func:`engine_logprob_correction` found: per-token advantage weights to apply (None: none), the response
    tokens a mask keeps in the update (``[B, R]`` bool; None: all) and the ``engine/*`` metrics to log."""

    weights: Optional[Tensor] = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    mask: Optional[Tensor] = None


def engine_logprob_correction(episodes: Episodes, settings: RolloutCorrectionSettings) -> EngineCorrection:
    """Compare the log-probs the engine recorded for ``episodes`` (``engine_logprobs``, if it did) with the trainer's
    (``logprobs``, the PPO ratio's "old" log-probs), and correct as ``settings`` say.

    Metrics: ``engine/logprob_abs_diff`` (mean |delta log p| over response tokens), ``engine/logprob_max_abs_diff``,
    ``engine/kl`` (KL(engine || trainer) on the sampled tokens); with token TIS the mean ``engine/tis_weight`` and
    the share of tokens at the cap ``engine/tis_capped``; with sequence TIS ``engine/seq_tis_weight`` and
    ``engine/seq_tis_capped`` over sequences; with a mask ``engine/masked_tokens`` (share of response tokens removed)
    and, for sequence masks, ``engine/masked_sequences``; with IcePop ``engine/icepop_weight`` (mean over kept
    tokens). Multiplying each token's advantage by a positive weight scales its clipped surrogate by exactly the
    weight, as TIS prescribes, and leaves the value targets alone. Nothing for an engine that records no log-probs
    of its own (the HF engine).
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
    weights, kept = None, None
    log_ratio = engine_log_ratio(trainer_logprobs, engine_logprobs, mask)
    cap = settings.truncated_is_cap
    if cap is not None and settings.truncated_is_level == "token":
        weights = truncated_importance_weights(trainer_logprobs, engine_logprobs, cap)
        metrics["engine/tis_weight"] = masked_mean(weights, mask)
        capped = (trainer_logprobs - engine_logprobs).float() >= math.log(cap)  # not weights == cap: rounding
        metrics["engine/tis_capped"] = masked_mean(capped.float(), mask)
    elif cap is not None:
        weights = sequence_truncated_importance_weights(log_ratio, mask, cap)
        metrics["engine/seq_tis_weight"] = weights[:, 0].mean()
        metrics["engine/seq_tis_capped"] = (log_ratio.sum(dim=1) >= math.log(cap)).float().mean()
    if settings.mask is not None:
        low, high = settings.band
        if settings.mask == "icepop":
            weights, kept = icepop_weights(log_ratio, mask, low, high)
            metrics["engine/icepop_weight"] = masked_mean(weights, kept)
        elif settings.mask == "token":
            kept = token_rejection_mask(log_ratio, mask, low, high)
        else:
            kept = sequence_rejection_mask(log_ratio, mask, low, high, geometric=settings.mask == "geometric")
            metrics["engine/masked_sequences"] = (~kept.any(dim=1)).float().mean()
        metrics["engine/masked_tokens"] = 1 - masked_mean(kept.float(), mask)
    return EngineCorrection(weights, metrics, kept)
