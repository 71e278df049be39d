"""The K-wise ranking loss of the InstructGPT reward model (Ouyang et al. 2022, section 3.5, eq. 1).

A labeler ranks K responses to one prompt. All C(K, 2) pairs of that prompt form ONE batch
element: each response is forwarded once, and the loss of the prompt is the mean over its pairs
of -log sigmoid(r(x, y_w) - r(x, y_l)). The batch loss is the mean over prompts.

Responses of a batch are laid out flat, group (prompt) after group, so response ``j`` of group
``g`` sits at flat index ``offset_g + j`` of the reward vector.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class ComparisonPairs(NamedTuple):
    """Every (better, worse) pair of a batch of ranked groups, as flat indices into the rewards.

    A NamedTuple, so Lightning moves it to the device along with the rest of a batch.

    Attributes:
        winner: ``[P]`` flat index of the better response of each pair.
        loser: ``[P]`` flat index of the worse response of each pair.
        group: ``[P]`` index of the group (prompt) each pair belongs to.
        is_best_vs_worst: ``[P]`` the winner has its group's best rank and the loser the worst.
        is_adjacent: ``[P]`` the two ranks are consecutive among the group's distinct ranks.
        num_groups: Number of groups in the batch.
        num_responses: Number of responses in the batch (the length of the reward vector).
    """

    winner: Tensor
    loser: Tensor
    group: Tensor
    is_best_vs_worst: Tensor
    is_adjacent: Tensor
    num_groups: int
    num_responses: int

    @property
    def num_pairs(self) -> int:
        """Number of pairs ``P``."""
        return self.winner.numel()

    def to(self, device: torch.device | str) -> ComparisonPairs:
        """The same pairs with every tensor on ``device``."""
        return self._replace(**{name: getattr(self, name).to(device) for name in self._TENSOR_FIELDS})

    _TENSOR_FIELDS = ("winner", "loser", "group", "is_best_vs_worst", "is_adjacent")


def comparison_pairs(ranks: list[list[int]]) -> ComparisonPairs:
    """All untied pairs of each group of ranked responses.

    Args:
        ranks: For each group, the rank of each of its responses; lower is better, equal ranks
            are ties and form no pair. ``[[0, 1, 2, 3]]`` is one group of four in best-to-worst
            order.

    Returns:
        The pairs, grouped by group, each group's pairs in order of (first index, second index).

    Raises:
        ValueError: If there are no groups, or a group yields no pair (fewer than two responses
            or all ranks tied). The message names the group; callers add file and record.
    """
    if len(ranks) == 0:
        raise ValueError("comparison_pairs got no groups")
    winner, loser, group, best_vs_worst, adjacent = [], [], [], [], []
    offset = 0
    for group_index, group_ranks in enumerate(ranks):
        distinct = sorted(set(group_ranks))
        if len(distinct) < 2:
            raise ValueError(
                f"group {group_index} has ranks {list(group_ranks)}: a group needs at least two "
                "responses with different ranks to form a comparison pair"
            )
        position = {rank: i for i, rank in enumerate(distinct)}
        best, worst = distinct[0], distinct[-1]
        for i, rank_i in enumerate(group_ranks):
            for j in range(i + 1, len(group_ranks)):
                rank_j = group_ranks[j]
                if rank_i == rank_j:
                    continue
                (w, rank_w), (lo, rank_l) = sorted([(i, rank_i), (j, rank_j)], key=lambda item: item[1])
                winner.append(offset + w)
                loser.append(offset + lo)
                group.append(group_index)
                best_vs_worst.append(rank_w == best and rank_l == worst)
                adjacent.append(position[rank_l] == position[rank_w] + 1)
        offset += len(group_ranks)
    return ComparisonPairs(
        winner=torch.tensor(winner, dtype=torch.long),
        loser=torch.tensor(loser, dtype=torch.long),
        group=torch.tensor(group, dtype=torch.long),
        is_best_vs_worst=torch.tensor(best_vs_worst, dtype=torch.bool),
        is_adjacent=torch.tensor(adjacent, dtype=torch.bool),
        num_groups=len(ranks),
        num_responses=offset,
    )


def kwise_ranking_loss(rewards: Tensor, pairs: ComparisonPairs) -> Tensor:
    """InstructGPT eq. 1: per group the mean over its pairs of -log sigmoid(r_w - r_l), then the mean over groups.

    Computed in float32 (or float64 if the rewards are) for a stable log-sigmoid.

    Args:
        rewards: ``[N]`` one scalar reward per response, flat in the layout of ``pairs``.
        pairs: From :func:`comparison_pairs`.

    Returns:
        Scalar loss.
    """
    if rewards.dim() != 1 or rewards.shape[0] != pairs.num_responses:
        raise ValueError(
            f"rewards must have shape [{pairs.num_responses}] (one per response), got {tuple(rewards.shape)}"
        )
    pairs = pairs.to(rewards.device)
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    pair_losses = -F.logsigmoid(rewards[pairs.winner] - rewards[pairs.loser])
    group_sums = torch.zeros(pairs.num_groups, dtype=rewards.dtype, device=rewards.device)
    group_sums = group_sums.index_add(0, pairs.group, pair_losses)
    pairs_per_group = torch.bincount(pairs.group, minlength=pairs.num_groups).to(rewards.dtype)
    return (group_sums / pairs_per_group).mean()
