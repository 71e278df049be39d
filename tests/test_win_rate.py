"""Win rates with bootstrap intervals and the length-controlled win rate, on hand-made cases."""

import pytest
import torch

from lit_rlhf.algorithms.win_rate import length_controlled_win_rate, pairwise_outcomes, win_rate


def test_outcomes_count_ties_as_half():
    outcomes = pairwise_outcomes(torch.tensor([2.0, 1.0, 3.0, 3.05]), torch.tensor([1.0, 2.0, 3.0, 3.0]))
    assert outcomes.tolist() == [1.0, 0.0, 0.5, 1.0]
    tolerant = pairwise_outcomes(torch.tensor([3.05]), torch.tensor([3.0]), tie_tolerance=0.1)
    assert tolerant.tolist() == [0.5]
    with pytest.raises(ValueError, match=r"two \[N\] score tensors"):
        pairwise_outcomes(torch.ones(3), torch.ones(2))


def test_all_wins_and_all_ties_have_degenerate_intervals():
    prompts = torch.arange(20)
    wins = win_rate(torch.ones(20), prompts, resamples=200)
    assert (wins.value, wins.low, wins.high, wins.prompts, wins.comparisons) == (1.0, 1.0, 1.0, 20, 20)
    ties = win_rate(torch.full((20,), 0.5), prompts, resamples=200)
    assert (ties.value, ties.low, ties.high) == (0.5, 0.5, 0.5)


def test_one_prompt_is_the_mean_of_its_comparisons_with_no_spread():
    rate = win_rate(torch.tensor([1.0, 0.0, 0.5, 1.0]), torch.zeros(4), resamples=100)
    assert rate.value == pytest.approx(0.625)
    assert rate.low == rate.high == pytest.approx(0.625)  # resampling one prompt always draws it


def test_each_prompt_weighs_the_same_however_many_comparisons_it_has():
    # Prompt 0: 9 losses; prompt 1: 1 win. Per comparison 0.1, per prompt 0.5.
    outcomes = torch.tensor([0.0] * 9 + [1.0])
    prompts = torch.tensor([0] * 9 + [1])
    assert win_rate(outcomes, prompts, resamples=100).value == pytest.approx(0.5)


def test_interval_covers_the_value_and_narrows_with_more_prompts():
    generator = torch.Generator().manual_seed(0)
    widths = []
    for n in (50, 800):
        outcomes = (torch.rand(n, generator=generator) < 0.7).double()
        rate = win_rate(outcomes, torch.arange(n), resamples=1000, seed=1)
        assert rate.low <= rate.value <= rate.high
        assert rate.low > 0.5 or n == 50  # 800 prompts at a true 0.7: the interval clears 0.5
        widths.append(rate.high - rate.low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16) = 1/4 as wide
    again = win_rate(outcomes, torch.arange(800), resamples=1000, seed=1)
    assert (again.low, again.high) == (rate.low, rate.high)  # seeded: a report is reproducible


def _judged_by(length_effect: float, quality: float, n: int = 3000, seed: int = 0):
    """Outcomes of a constructed judge: P(win) = sigmoid(quality + length_effect * tanh(dlen / sd)); the policy
    is longer than the reference 80% of the time."""
    generator = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(n, generator=generator) < 0.8, 1.0, -1.0)
    length_difference = sign * (1 + 30 * torch.rand(n, generator=generator))
    p_win = torch.sigmoid(quality + length_effect * torch.tanh(length_difference / length_difference.std()))
    outcomes = (torch.rand(n, generator=generator) < p_win).double()
    return outcomes, length_difference, torch.arange(n)


def test_length_control_removes_a_pure_length_effect():
    outcomes, length_difference, prompts = _judged_by(length_effect=3.0, quality=0.0)
    raw = win_rate(outcomes, prompts, resamples=300)
    controlled = length_controlled_win_rate(outcomes, length_difference, prompts, resamples=300)
    assert raw.low > 0.65  # the judge only likes length, and the policy is usually longer
    assert controlled.low < 0.5 < controlled.high  # the interval holds a coin flip; seeds 0-3 give 0.49-0.52
    assert abs(controlled.value - 0.5) < 0.04


def test_length_control_keeps_a_quality_effect_that_does_not_depend_on_length():
    outcomes, length_difference, prompts = _judged_by(length_effect=0.0, quality=1.0)
    raw = win_rate(outcomes, prompts, resamples=300)
    controlled = length_controlled_win_rate(outcomes, length_difference, prompts, resamples=300)
    assert controlled.value == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.03)
    assert controlled.value == pytest.approx(raw.value, abs=0.03)
    assert controlled.low > 0.65


def test_length_control_without_length_differences_is_the_plain_rate():
    outcomes = torch.tensor([1.0, 1.0, 0.0, 0.5, 1.0, 0.0])
    prompts = torch.arange(6)
    controlled = length_controlled_win_rate(outcomes, torch.zeros(6), prompts, resamples=100)
    assert controlled.value == pytest.approx(win_rate(outcomes, prompts, resamples=100).value, abs=1e-6)


def test_a_policy_against_itself_ties_everywhere_and_wins_half():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.5, 0.7])
    prompts = torch.tensor([0, 0, 1, 1, 2, 2])
    outcomes = pairwise_outcomes(scores, scores.clone())
    assert outcomes.tolist() == [0.5] * 6
    rate = win_rate(outcomes, prompts, resamples=100)
    assert (rate.value, rate.low, rate.high, rate.prompts, rate.comparisons) == (0.5, 0.5, 0.5, 3, 6)
    controlled = length_controlled_win_rate(outcomes, torch.tensor([3.0, -1.0, 0.0, 2.0, -4.0, 1.0]), prompts)
    assert controlled.value == pytest.approx(0.5, abs=1e-6)


def test_mean_over_prompts_weighs_prompts_equally_with_a_bootstrap_interval():
    from lit_rlhf.algorithms.win_rate import mean_over_prompts

    # Prompt 0 has three scores (mean 2), prompt 1 one (4): the mean over prompts is 3, not 2.5.
    mean = mean_over_prompts(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 0, 1]), resamples=500)
    assert mean.value == pytest.approx(3.0)
    assert mean.low == pytest.approx(2.0) and mean.high == pytest.approx(4.0)  # both prompts drawn twice, or once each
