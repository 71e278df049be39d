"""Direct preference optimisation (Rafailov et al. 2023) on ranked groups: every pair of a group, each response
forwarded once."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

from lit_rlhf.algorithms.ranking import ComparisonPairs


class DPOLossOutput(NamedTuple):
    """Per-pair DPO loss and the implicit rewards behind it (detached)."""

    per_pair: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(
    policy_logps: Tensor, reference_logps: Tensor, pairs: ComparisonPairs, beta: float, label_smoothing: float = 0.0
) -> DPOLossOutput:
    """DPO's loss for every pair: ``-log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))``.

    With ``label_smoothing`` eps (conservative DPO): ``-(1 - eps) log sigmoid(m) - eps log sigmoid(-m)``.

    Args:
        policy_logps: ``[N]`` summed log-probs of each response under the policy (with grad).
        reference_logps: ``[N]`` the same under the reference.
        pairs: Winner/loser indices into the ``N`` responses
            (from :func:`~lit_rlhf.algorithms.ranking.comparison_pairs`).
        beta: Strength of the implicit KL constraint (DPO paper: 0.1).
        label_smoothing: Probability that a label is flipped, in [0, 0.5).

    Returns:
        ``per_pair`` ``[P]`` losses, and the implicit rewards ``beta * (pi - ref)`` of each pair's winner and loser.
    """
    pairs = pairs.to(policy_logps.device)
    rewards = beta * (policy_logps - reference_logps.to(policy_logps.dtype))
    chosen, rejected = rewards[pairs.winner], rewards[pairs.loser]
    margin = chosen - rejected
    per_pair = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return DPOLossOutput(per_pair, chosen.detach(), rejected.detach())
