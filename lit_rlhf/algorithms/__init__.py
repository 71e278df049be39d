"""Pure tensor functions of the RLHF recipe (torch only; no Lightning, no transformers).

- ``masked``: ``masked_sum``, ``masked_mean``, ``masked_var``, ``whiten``, ``explained_variance``.
- ``ranking``: InstructGPT's K-wise reward-model loss: ``comparison_pairs``, ``ComparisonPairs``,
  ``kwise_ranking_loss``.
- ``kl``: per-token KL estimators ``kl_penalty`` (k1/k2/k3) and the ``FixedKLController`` /
  ``AdaptiveKLController`` that set beta.
- ``rewards``: ``per_token_rewards`` (score at the last token, -beta*KL on each), and the group
  baselines ``rloo_advantages`` and ``grpo_advantages``.
- ``gae``: ``gae_advantages``.
- ``losses``: ``logprobs_from_logits``, ``entropy_from_logits``, and the per-token losses
  ``clipped_policy_loss`` / ``clipped_value_loss`` (``TokenLoss``).
- ``aggregation``: ``step_normalizer`` and ``aggregate_loss``: a step's loss from per-token losses,
  exact however the step is split into micro-batches and ranks (token mean, sequence mean, Dr. GRPO).
- ``preference``: ``dpo_loss`` (DPO on sequence log-probs, for every pair of a K-wise group).
- ``schedules``: ``warmup_then_cosine``, the LambdaLR multiplier of every stage (linear warm-up, cosine to a floor).
- ``ema``: ``ema_update`` for an exponential moving average of weights.
"""

from lit_rlhf.algorithms.aggregation import LOSS_AGGREGATIONS, LossAggregation, aggregate_loss, step_normalizer
from lit_rlhf.algorithms.ema import ema_update
from lit_rlhf.algorithms.gae import gae_advantages
from lit_rlhf.algorithms.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty
from lit_rlhf.algorithms.losses import (
    TokenLoss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    logprobs_from_logits,
)
from lit_rlhf.algorithms.masked import explained_variance, masked_mean, masked_sum, masked_var, whiten
from lit_rlhf.algorithms.preference import DPOLossOutput, dpo_loss
from lit_rlhf.algorithms.ranking import ComparisonPairs, comparison_pairs, kwise_ranking_loss
from lit_rlhf.algorithms.rewards import grpo_advantages, per_token_rewards, rloo_advantages
from lit_rlhf.algorithms.schedules import warmup_then_cosine

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "ComparisonPairs",
    "DPOLossOutput",
    "FixedKLController",
    "LOSS_AGGREGATIONS",
    "LossAggregation",
    "TokenLoss",
    "aggregate_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "comparison_pairs",
    "dpo_loss",
    "ema_update",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "grpo_advantages",
    "kl_penalty",
    "kwise_ranking_loss",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "per_token_rewards",
    "rloo_advantages",
    "step_normalizer",
    "warmup_then_cosine",
    "whiten",
]
