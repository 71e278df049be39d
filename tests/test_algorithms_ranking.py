"""InstructGPT's K-wise ranking loss (eq. 1) against an explicit loop over pairs."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_rlhf.algorithms import comparison_pairs, kwise_ranking_loss


def test_pairs_of_one_group_with_a_tie():
    # ranks 0, 1, 1, 2: the tied middle responses form no pair with each other
    pairs = comparison_pairs([[0, 1, 1, 2]])
    assert pairs.winner.tolist() == [0, 0, 0, 1, 2]
    assert pairs.loser.tolist() == [1, 2, 3, 3, 3]
    assert pairs.group.tolist() == [0, 0, 0, 0, 0]
    assert pairs.is_best_vs_worst.tolist() == [False, False, True, False, False]
    assert pairs.is_adjacent.tolist() == [True, True, False, True, True]
    assert (pairs.num_groups, pairs.num_responses, pairs.num_pairs) == (1, 4, 5)


def test_pairs_use_flat_offsets_and_put_the_better_rank_first():
    pairs = comparison_pairs([[0, 1], [1, 0, 2]])
    assert pairs.winner.tolist() == [0, 3, 2, 3]
    assert pairs.loser.tolist() == [1, 2, 4, 4]
    assert pairs.group.tolist() == [0, 1, 1, 1]
    assert pairs.is_best_vs_worst.tolist() == [True, False, False, True]
    assert pairs.is_adjacent.tolist() == [True, True, True, False]
    assert pairs.winner.dtype == torch.long and pairs.is_adjacent.dtype == torch.bool


@pytest.mark.parametrize("ranks", [[[3, 3, 3]], [[0]], [[0, 1], []]])
def test_group_without_pairs_raises_and_names_the_group(ranks):
    with pytest.raises(ValueError, match=f"group {len(ranks) - 1}"):
        comparison_pairs(ranks)


def test_no_groups_raises():
    with pytest.raises(ValueError):
        comparison_pairs([])


def test_single_pair_by_hand():
    # -log sigmoid(log 3) = -log(3/4) = log(4/3)
    rewards = torch.tensor([math.log(3.0), 0.0])
    loss = kwise_ranking_loss(rewards, comparison_pairs([[0, 1]]))
    assert loss.item() == pytest.approx(math.log(4 / 3))


def reference_loss(rewards, ranks):
    """Explicit double loop: mean over each group's pairs, then mean over groups."""
    group_losses, offset = [], 0
    for group_ranks in ranks:
        total, count = 0.0, 0
        for i in range(len(group_ranks)):
            for j in range(len(group_ranks)):
                if group_ranks[i] < group_ranks[j]:
                    total = total - F.logsigmoid(rewards[offset + i] - rewards[offset + j])
                    count += 1
        group_losses.append(total / count)
        offset += len(group_ranks)
    return sum(group_losses) / len(group_losses)


RANKS = [
    [1, 0],  # K=2, listed worst first
    [0, 1, 1, 2],  # K=4 with a tie
    [0, 1, 2, 3, 4, 5, 5, 7, 8],  # K=9 with a tie
]
REWARDS = [0.3, -0.2, 1.0, 0.5, -0.4, 0.1, 2.0, 1.5, 1.7, 0.2, -1.0, 0.0, 0.4, -0.3, 0.9]


def test_matches_explicit_loop_for_mixed_k_with_ties():
    rewards = torch.tensor(REWARDS)
    pairs = comparison_pairs(RANKS)
    assert pairs.num_pairs == 1 + 5 + 35
    expected = reference_loss(rewards, RANKS)
    torch.testing.assert_close(kwise_ranking_loss(rewards, pairs), expected)


def test_gradient_flows_and_matches_the_loop():
    rewards = torch.tensor(REWARDS, requires_grad=True)
    kwise_ranking_loss(rewards, comparison_pairs(RANKS)).backward()
    reference = torch.tensor(REWARDS, requires_grad=True)
    reference_loss(reference, RANKS).backward()
    torch.testing.assert_close(rewards.grad, reference.grad)
    # the best response of the K=2 group is index 1: raising its reward lowers the loss
    assert rewards.grad[1] < 0 < rewards.grad[0]


def test_each_group_weighs_the_same_whatever_its_pair_count():
    # group 0: one pair with loss log 2; group 1: six pairs each with loss log 2 -> mean log 2
    pairs = comparison_pairs([[0, 1], [0, 1, 2, 3]])
    assert kwise_ranking_loss(torch.zeros(6), pairs).item() == pytest.approx(math.log(2))
    # group 0 perfectly separated (loss ~0), group 1 at log 2: the batch loss is log 2 / 2
    rewards = torch.tensor([100.0, -100.0, 0.0, 0.0, 0.0, 0.0])
    assert kwise_ranking_loss(rewards, pairs).item() == pytest.approx(math.log(2) / 2)


def test_reward_shape_must_match_the_pairs():
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        kwise_ranking_loss(torch.zeros(4, 1), comparison_pairs([[0, 1, 2, 3]]))


def test_low_precision_rewards_give_a_float32_loss():
    loss = kwise_ranking_loss(torch.tensor([1.0, 0.0], dtype=torch.bfloat16), comparison_pairs([[0, 1]]))
    assert loss.dtype == torch.float32
