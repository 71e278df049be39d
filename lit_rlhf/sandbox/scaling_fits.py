"""Reward over-optimisation: the functional forms of Gao, Schulman & Hilton (2022, "Scaling laws for
reward model overoptimization"), their least-squares fits, and the KL of best-of-n sampling.

Gao et al. measure reward gains against ``d = sqrt(KL(pi || pi_init))`` and find

- best-of-n:  ``R_bon(d) = d * (alpha - beta * d)``
- RL:         ``R_RL(d)  = d * (alpha - beta * log d)``

where ``R`` is the reward *gain* over the initial policy (both curves pass through 0 at d = 0). Both
forms are linear in (alpha, beta), so ordinary least squares fits them exactly (no optimiser). Pure
numpy: no model, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

Form = Literal["bon", "rl"]


def bon_kl(n: int) -> float:
    """KL(best-of-n || base) in nats for a continuous reward (no ties): ``log n - (n - 1) / n``.

    An upper bound when several samples can tie (a discrete base policy that repeats responses);
    :func:`bon_kl_plugin` estimates the actual value from samples.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_kl_plugin(rewards: Sequence[float], n: int, outcomes: Optional[Sequence] = None) -> float:
    """KL(best-of-n || base), estimated from ``rewards`` of samples of the base policy for one prompt.

    The empirical distribution of the samples stands in for the base policy; best-of-n over it is
    computed exactly, ties included: an outcome whose reward has CDF ``F`` (``F_`` just below it) is
    picked with probability ``F**n - F_**n``. Samples are the same outcome when ``outcomes`` (e.g.
    the response texts) match; by default when their rewards are equal. Consistent: it converges to
    the true KL as the number of samples grows; with few samples it is at most ``log(len(rewards))``.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    rewards = [float(r) for r in rewards]
    keys = list(outcomes) if outcomes is not None else rewards
    if len(keys) != len(rewards) or not rewards:
        raise ValueError(
            f"need one outcome per reward and at least one sample, got {len(rewards)} rewards, {len(keys)} outcomes"
        )
    reward_of: dict = {}
    counts: dict = {}
    for key, reward in zip(keys, rewards):
        reward_of[key] = reward
        counts[key] = counts.get(key, 0) + 1
    total = len(keys)
    cdf_below, kl = 0.0, 0.0
    # Outcomes with equal reward but different identity are ordered arbitrarily: the argmax picks one of them.
    for key in sorted(counts, key=lambda k: reward_of[k]):
        p = counts[key] / total
        cdf = cdf_below + p
        q = cdf**n - cdf_below**n
        if q > 0:
            kl += q * math.log(q / p)
        cdf_below = cdf
    return kl


def best_of_n_weights(num_samples: int, n: int) -> np.ndarray:
    """Probability that the best of ``n`` samples drawn *without replacement* from ``num_samples``
    (sorted ascending by the selection reward) is the i-th one: ``C(i-1, n-1) / C(num_samples, n)``.

    Averaging any per-sample quantity with these weights is the unbiased estimator of its
    best-of-n expectation from ``num_samples >= n`` samples (the estimator Gao et al. use).
    """
    if not 1 <= n <= num_samples:
        raise ValueError(f"best-of-n from {num_samples} samples needs 1 <= n <= {num_samples}, got n={n}")
    # Log-space binomials: no overflow for hundreds of samples.
    log_w = np.array([_log_comb(i - 1, n - 1) if i >= n else -np.inf for i in range(1, num_samples + 1)])
    weights = np.exp(log_w - _log_comb(num_samples, n))
    return weights / weights.sum()  # sums to 1 up to rounding (hockey-stick identity)


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


@dataclass(frozen=True)
class Fit:
    """One least-squares fit of ``R(d)`` (a reward gain) against ``d = sqrt(KL)``."""

    form: Form
    alpha: float
    beta: float
    r2: float
    num_points: int

    def __call__(self, d: np.ndarray | float) -> np.ndarray:
        d = np.asarray(d, dtype=float)
        if self.form == "bon":
            return d * (self.alpha - self.beta * d)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (self.alpha - self.beta * np.log(np.where(d > 0, d, 1.0))), 0.0)

    @property
    def peak_d(self) -> Optional[float]:
        """``d`` at which the fitted gain is largest, or None when the fit never turns down (beta <= 0)."""
        if self.beta <= 0:
            return None
        if self.form == "bon":
            return self.alpha / (2 * self.beta)  # d/dd [a d - b d^2] = 0
        exponent = self.alpha / self.beta - 1  # d/dd [a d - b d log d] = a - b log d - b = 0
        return math.exp(exponent) if exponent < 700 else math.inf  # a nearly flat beta: no turn in any range

    @property
    def peak_kl(self) -> Optional[float]:
        return None if self.peak_d is None else self.peak_d**2


def _design(form: Form, d: np.ndarray) -> np.ndarray:
    if form == "bon":
        return np.stack([d, -(d**2)], axis=1)
    if form == "rl":
        safe = np.where(d > 0, d, 1.0)
        return np.stack([d, -np.where(d > 0, d * np.log(safe), 0.0)], axis=1)
    raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")


def fit_gain(form: Form, d: Sequence[float], gain: Sequence[float]) -> Fit:
    """Least-squares ``alpha, beta`` of ``gain = d (alpha - beta d)`` (``bon``) or ``d (alpha - beta log d)``
    (``rl``) and the fit's R^2 = 1 - SS_res / SS_tot (SS_tot about the mean gain).

    ``gain`` is the reward minus the initial policy's (the curve passes through the origin, so there
    is no intercept). Points at ``d = 0`` carry no information about alpha, beta and are allowed.
    """
    d_arr, y = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    if d_arr.shape != y.shape or d_arr.ndim != 1:
        raise ValueError(f"d and gain must be 1-D and the same length, got {d_arr.shape} and {y.shape}")
    if np.any(d_arr < 0) or not np.all(np.isfinite(d_arr)) or not np.all(np.isfinite(y)):
        raise ValueError("d must be finite and >= 0 (it is sqrt(KL)) and every gain finite")
    if np.count_nonzero(d_arr > 0) < 2:
        raise ValueError(f"a two-parameter fit needs at least two points with d > 0, got {np.count_nonzero(d_arr > 0)}")
    design = _design(form, d_arr)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([alpha, beta])
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else float("nan")
    return Fit(form=form, alpha=float(alpha), beta=float(beta), r2=r2, num_points=int(len(y)))


def observed_peak(d: Sequence[float], reward: Sequence[float]) -> tuple[float, float]:
    """``(d, reward)`` of the highest measured point."""
    i = int(np.argmax(np.asarray(reward, dtype=float)))
    return float(d[i]), float(reward[i])
