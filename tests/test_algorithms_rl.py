"""KL estimators and controllers, per-token rewards, group baselines and GAE on hand-computed numbers."""

import math

import pytest
import torch

from lit_rlhf.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    gae_advantages,
    grpo_advantages,
    kl_penalty,
    per_token_rewards,
    rloo_advantages,
)

LN2 = math.log(2.0)


# --- KL estimators -------------------------------------------------------------------------------

# log ratios logp - ref = 0, ln 2, -ln 2
LOGP = torch.tensor([-1.0, -1.0 + LN2, -1.0 - LN2])
REF = torch.tensor([-1.0, -1.0, -1.0])


@pytest.mark.parametrize(
    "estimator, expected",
    [
        ("k1", [0.0, LN2, -LN2]),
        ("k2", [0.0, 0.5 * LN2**2, 0.5 * LN2**2]),
        # exp(-lr) - 1 + lr: 0.5 - 1 + ln2 and 2 - 1 - ln2
        ("k3", [0.0, LN2 - 0.5, 1.0 - LN2]),
    ],
)
def test_kl_estimators(estimator, expected):
    torch.testing.assert_close(kl_penalty(LOGP, REF, estimator), torch.tensor(expected))


def test_unknown_estimator_lists_the_choices():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(LOGP, REF, "k4")


# --- KL controllers ------------------------------------------------------------------------------


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.02)
    controller.update(current_kl=100.0, n_steps=512)
    assert controller.beta == 0.02
    assert controller.state_dict() == {"beta": 0.02}


def test_adaptive_controller_clips_the_error_and_scales_by_steps():
    controller = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=256)  # error 0.5 clipped to 0.2
    assert controller.beta == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # 0.100512
    controller.update(current_kl=5.4, n_steps=1000)  # error -0.1
    assert controller.beta == pytest.approx(0.100512 * 0.99)


def test_adaptive_controller_resumes_exactly():
    controller = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=3.0, n_steps=512)
    resumed = AdaptiveKLController(init_beta=0.5, target=6.0, horizon=10000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.beta == controller.beta
    controller.update(current_kl=7.0, n_steps=64)
    resumed.update(current_kl=7.0, n_steps=64)
    assert resumed.beta == controller.beta


def test_adaptive_controller_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_beta=0.1, target=0.0, horizon=10)


# --- per-token rewards ---------------------------------------------------------------------------


def test_per_token_rewards_put_the_score_on_the_last_valid_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = per_token_rewards(scores, kl, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.01, -0.02, 0.97], [-0.05, 2.05, 0.0]]))


def test_per_token_rewards_reject_a_row_without_tokens():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        per_token_rewards(torch.zeros(2), torch.zeros(2, 2), mask, beta=0.1)


# --- group baselines -----------------------------------------------------------------------------

SCORES = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])


def test_rloo_subtracts_the_mean_of_the_others():
    # 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2 ; 10 - 25, 10 - 25, 40 - 10
    expected = torch.tensor([-1.5, 0.0, 1.5, -15.0, -15.0, 30.0])
    torch.testing.assert_close(rloo_advantages(SCORES, group_size=3), expected)


def test_grpo_standardises_within_each_group():
    # group 2: mean 20, unbiased std sqrt(600 / 2) = sqrt(300)
    s = math.sqrt(300.0)
    expected = torch.tensor([-1.0, 0.0, 1.0, -10 / s, -10 / s, 20 / s])
    torch.testing.assert_close(grpo_advantages(SCORES, group_size=3), expected, rtol=1e-5, atol=1e-5)
    assert grpo_advantages(torch.full((4,), 7.0), group_size=2).tolist() == [0.0] * 4


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="divisible"):
        rloo_advantages(SCORES, group_size=4)
    with pytest.raises(ValueError, match=">= 2"):
        grpo_advantages(SCORES, group_size=1)


# --- GAE -----------------------------------------------------------------------------------------

# Three episodes of lengths 3, 2, 1 (right-padded with junk that must be ignored).
REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 99.0], [3.0, 99.0, 99.0]])
VALUES = torch.tensor([[0.5, 0.25, 0.5], [1.0, 0.5, 99.0], [1.0, 99.0, 99.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])


def test_gae_no_discount():
    # gamma=1, lam=0.5. Row 0: deltas (from the end) 1-0.5=0.5, 0.5-0.25=0.25, 0.25-0.5=-0.25;
    # A2=0.5, A1=0.25+0.5*0.5=0.5, A0=-0.25+0.5*0.5=0.
    # Row 1: deltas 2-0.5=1.5, 0.5+0.5-1=0; A1=1.5, A0=0+0.5*1.5=0.75. Row 2: A0 = 3-1 = 2.
    advantages, returns = gae_advantages(REWARDS, VALUES, MASK, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.5, 0.5], [0.75, 1.5, 0.0], [2.0, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.5, 0.75, 1.0], [1.75, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def test_gae_lambda_one_gives_rewards_to_go():
    _, returns = gae_advantages(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 1.0], [2.5, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def test_gae_with_discount():
    # gamma=0.5, lam=0.5 (gamma*lam=0.25). Row 0: delta2=1-0.5=0.5 -> A2=0.5;
    # delta1=0+0.5*0.5-0.25=0 -> A1=0.25*0.5=0.125; delta0=0+0.5*0.25-0.5=-0.375 -> A0=-0.375+0.25*0.125.
    # Row 1: delta1=2-0.5=1.5 -> A1=1.5; delta0=0.5+0.5*0.5-1=-0.25 -> A0=-0.25+0.25*1.5=0.125.
    advantages, returns = gae_advantages(REWARDS, VALUES, MASK, gamma=0.5, lam=0.5)
    expected = torch.tensor([[-0.34375, 0.125, 0.5], [0.125, 1.5, 0.0], [2.0, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, torch.where(MASK.bool(), expected + VALUES, torch.zeros(())))


def test_gae_discounted_monte_carlo():
    # gamma=0.5, lam=1: returns are discounted rewards-to-go: row 0 [0.25, 0.5, 1], row 1 [1.5, 2]
    advantages, returns = gae_advantages(REWARDS, VALUES, MASK, gamma=0.5, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[0.25, 0.5, 1.0], [1.5, 2.0, 0.0], [3.0, 0.0, 0.0]]))
    torch.testing.assert_close(advantages[0], torch.tensor([-0.25, 0.25, 0.5]))


def test_gae_rejects_a_mask_with_gaps():
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        gae_advantages(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1, 0, 1]]))
