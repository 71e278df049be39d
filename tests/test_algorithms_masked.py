"""Masked reductions, whitening and explained variance on hand-checkable numbers."""

import math

import pytest
import torch

from lit_rlhf.algorithms import explained_variance, masked_mean, masked_sum, masked_var, whiten

NAN, INF = float("nan"), float("inf")
# Valid entries are 1, 2, 3, 4: sum 10, mean 2.5, squared deviations sum to 5.
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, INF]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_masked_sum_and_mean_ignore_nan_and_inf_outside_the_mask():
    assert masked_sum(X, MASK).item() == 10.0
    assert masked_mean(X, MASK).item() == 2.5
    assert masked_sum(X, MASK, dim=1).tolist() == [6.0, 4.0]
    assert masked_mean(X, MASK, dim=1).tolist() == [2.0, 4.0]


def test_masked_mean_accepts_float_mask_and_gives_zero_for_empty_rows():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mean(X, mask, dim=1).tolist() == [1.5, 0.0]
    assert masked_mean(X, torch.zeros_like(mask)).item() == 0.0


def test_masked_var_biased_and_unbiased():
    assert masked_var(X, MASK, unbiased=True).item() == pytest.approx(5 / 3)
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(1.25)


def test_mask_shape_mismatch_raises():
    with pytest.raises(ValueError, match="mask shape"):
        masked_sum(X, MASK[0])


def test_whiten_normalises_masked_entries_and_zeros_the_rest():
    out = whiten(X, MASK)
    s = math.sqrt(1.25)
    expected = [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]]
    torch.testing.assert_close(out, torch.tensor(expected))


def test_whiten_keeps_mean_when_not_shifting_and_works_without_mask():
    s = math.sqrt(1.25)
    out = whiten(torch.tensor([1.0, 2.0, 3.0, 4.0]), shift_mean=False)
    torch.testing.assert_close(out, torch.tensor([2.5 - 1.5 / s, 2.5 - 0.5 / s, 2.5 + 0.5 / s, 2.5 + 1.5 / s]))


def test_explained_variance_perfect_mean_worse_and_undefined():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0, 99.0])
    mask = torch.tensor([True, True, True, True, False])
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((5,), 2.5), returns, mask).item() == pytest.approx(0.0)
    # errors [-3, -1, 1, 3] have variance 5 against 1.25 for the returns: 1 - 4 = -3
    worse = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert explained_variance(worse, returns, mask).item() == pytest.approx(-3.0)
    assert math.isnan(explained_variance(returns, torch.ones(5), mask).item())
