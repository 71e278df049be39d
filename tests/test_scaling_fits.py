"""The over-optimisation fits (Gao et al. 2022 functional forms) and the best-of-n KL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lit_rlhf.sandbox.scaling_fits import Fit, best_of_n_weights, bon_kl, bon_kl_plugin, fit_gain, observed_peak


@pytest.mark.parametrize("form, alpha, beta", [("bon", 0.8, 0.3), ("rl", 0.5, 0.2), ("rl", 1.2, 0.6)])
def test_fit_recovers_known_alpha_beta_from_noisy_points(form, alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.0, 4.0, 40)
    truth = Fit(form, alpha, beta, r2=1.0, num_points=len(d))(d)
    fit = fit_gain(form, d, truth + rng.normal(0, 0.01, size=d.shape))
    assert fit.alpha == pytest.approx(alpha, abs=0.02)
    assert fit.beta == pytest.approx(beta, abs=0.02)
    assert fit.r2 > 0.99


def test_fit_of_the_wrong_form_is_worse_and_r2_is_honest():
    d = np.linspace(0.05, 4.0, 30)
    rl_points = Fit("rl", 0.5, 0.4, 1.0, len(d))(d)
    assert fit_gain("rl", d, rl_points).r2 == pytest.approx(1.0, abs=1e-9)
    assert fit_gain("bon", d, rl_points).r2 < 0.999
    # Pure noise: nothing to explain.
    noise = np.random.default_rng(1).normal(size=d.shape)
    assert fit_gain("bon", d, noise).r2 < 0.3


def test_fitted_peak_is_where_the_curve_turns_down():
    bon = Fit("bon", 0.8, 0.2, 1.0, 10)
    assert bon.peak_d == pytest.approx(2.0)  # a / 2b
    assert bon.peak_kl == pytest.approx(4.0)
    rl = Fit("rl", 0.5, 0.25, 1.0, 10)
    grid = np.linspace(0.01, 20, 200001)
    assert rl.peak_d == pytest.approx(grid[np.argmax(rl(grid))], rel=1e-3)  # exp(a/b - 1)
    assert Fit("rl", 0.5, -0.1, 1.0, 10).peak_d is None  # never turns down
    assert observed_peak([0, 1, 2], [0.1, 0.5, 0.3]) == (1.0, 0.5)


def test_fit_refuses_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="at least two points"):
        fit_gain("bon", [0.0, 1.0], [0.0, 0.2])
    with pytest.raises(ValueError, match="d must be finite and >= 0"):
        fit_gain("rl", [-1.0, 1.0, 2.0], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="form must be"):
        fit_gain("linear", [0.5, 1.0, 2.0], [0.0, 0.1, 0.2])


def test_bon_kl_formula():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    with pytest.raises(ValueError):
        bon_kl(0)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_bon_kl_matches_a_sampled_estimate_on_a_continuous_toy_distribution(n):
    # Base policy: a standard normal "response" whose reward is itself. Best-of-n over 20000 samples'
    # empirical distribution estimates the KL; the analytic value holds for continuous rewards.
    samples = np.random.default_rng(n).normal(size=20000)
    assert bon_kl_plugin(samples, n) == pytest.approx(bon_kl(n), abs=0.02)
    # A second estimator, straight from the definition: draw best-of-n responses and average
    # log(pi_bon / pi_base) = log(n F^(n-1)) with the true CDF of the rewards (Phi).
    rng = np.random.default_rng(100 + n)
    best = rng.normal(size=(50000, n)).max(axis=1)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(best / math.sqrt(2)))
    assert np.mean(math.log(n) + (n - 1) * np.log(cdf)) == pytest.approx(bon_kl(n), abs=0.02)


def test_bon_kl_with_repeated_responses_is_below_the_analytic_bound():
    # A base policy that says one of 3 responses (probabilities 0.6, 0.3, 0.1): exact best-of-n over them.
    outcomes = ["a"] * 6 + ["b"] * 3 + ["c"]
    rewards = [0.0] * 6 + [1.0] * 3 + [2.0]
    for n in (2, 4, 8):
        p = np.array([0.6, 0.3, 0.1])
        cdf = np.cumsum(p)
        q = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n
        exact = float(np.sum(q * np.log(q / p)))
        assert bon_kl_plugin(rewards, n, outcomes) == pytest.approx(exact)
        assert exact < bon_kl(n)
    assert bon_kl_plugin([0.3] * 5, 4) == 0.0  # a deterministic policy: best-of-n changes nothing


def test_best_of_n_weights_are_the_unbiased_estimator():
    values = np.arange(1.0, 7.0)  # 6 samples sorted ascending
    for n in range(1, 7):
        weights = best_of_n_weights(6, n)
        assert weights.sum() == pytest.approx(1.0)
        # Brute force: the mean of the max over all n-subsets.
        from itertools import combinations

        brute = np.mean([max(c) for c in combinations(values, n)])
        assert float(weights @ values) == pytest.approx(brute)
    with pytest.raises(ValueError):
        best_of_n_weights(4, 5)
