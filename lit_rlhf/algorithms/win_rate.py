"""Win rates of one policy against a reference, as InstructGPT reports its headline result (Fig. 1), with
intervals and the length control of AlpacaEval 2 (Dubois et al. 2024).

Outcomes are per comparison: 1 when the policy's response is judged better, 0 when worse, 0.5 on a tie.
Comparisons are grouped by prompt (a prompt's samples are not independent of each other), so a win rate is
the mean over prompts of each prompt's mean outcome, and its interval comes from resampling prompts
(percentile bootstrap).

The length-controlled win rate answers "how often would the policy win if its responses were as long as the
reference's": a logistic model ``P(win) = sigmoid(theta + phi * tanh(dlen / sd(dlen)))`` is fitted to the
outcomes (ties as half a win), and ``sigmoid(theta)`` is the win rate at zero length difference. A judge that
only rewards length gets a length-controlled win rate of about 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def pairwise_outcomes(policy_scores: Tensor, reference_scores: Tensor, tie_tolerance: float = 0.0) -> Tensor:
    """``[N]`` outcomes of paired scores: 1 policy better, 0 worse, 0.5 when ``|difference| <= tie_tolerance``."""
    if policy_scores.shape != reference_scores.shape or policy_scores.dim() != 1:
        raise ValueError(
            f"expected two [N] score tensors, got {tuple(policy_scores.shape)} and {tuple(reference_scores.shape)}"
        )
    difference = policy_scores.double() - reference_scores.double()
    outcomes = (difference > 0).double()
    return torch.where(difference.abs() <= tie_tolerance, torch.full_like(outcomes, 0.5), outcomes)


def _group_index(groups: Tensor) -> tuple[Tensor, int]:
    """``groups`` (any ids, ``[N]``) as consecutive integers ``0..G-1``, and ``G``."""
    if groups.dim() != 1 or len(groups) == 0:
        raise ValueError(f"expected a non-empty [N] tensor of prompt ids, got shape {tuple(groups.shape)}")
    _, index = torch.unique(groups, return_inverse=True)
    return index, int(index.max()) + 1


def _prompt_weights(index: Tensor, n_groups: int, prompt_counts: Tensor) -> Tensor:
    """``[B, N]`` comparison weights: each prompt counts ``prompt_counts[b, g]`` times, its comparisons equally."""
    per_prompt = torch.bincount(index, minlength=n_groups).double()
    return prompt_counts.double()[:, index] / per_prompt[index]


def _bootstrap_counts(n_groups: int, resamples: int, seed: int) -> Tensor:
    """``[B, G]`` how often each prompt is drawn in each of ``resamples`` resamples (with replacement)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_groups, (resamples, n_groups), generator=generator)
    return torch.zeros(resamples, n_groups, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, n_groups, dtype=torch.float64)
    )


@dataclass(frozen=True)
class WinRate:
    """A win rate (or a mean over prompts) with its percentile-bootstrap interval (``level``, e.g. 0.95) over
    ``prompts`` prompts."""

    value: float
    low: float
    high: float
    prompts: int
    comparisons: int
    level: float = 0.95


def _interval(value: float, resampled: Tensor, level: float, n_groups: int, n: int) -> WinRate:
    tail = (1 - level) / 2
    low, high = torch.quantile(resampled, torch.tensor([tail, 1 - tail], dtype=resampled.dtype)).tolist()
    return WinRate(value, low, high, n_groups, n, level)


def mean_over_prompts(
    values: Tensor, prompt_ids: Tensor, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> WinRate:
    """Mean over prompts of each prompt's mean value, with a percentile bootstrap interval over prompts (a judge's
    mean score, or a win rate when ``values`` are outcomes).

    Args:
        values: ``[N]`` per-sample values.
        prompt_ids: ``[N]`` which prompt each value belongs to.
        resamples: Bootstrap resamples of the prompts.
        level: Coverage of the interval.
        seed: Seeds the resampling, so a report is reproducible.
    """
    index, n_groups = _group_index(prompt_ids)
    values = values.double()
    counts = torch.cat([torch.ones(1, n_groups, dtype=torch.float64), _bootstrap_counts(n_groups, resamples, seed)])
    weights = _prompt_weights(index, n_groups, counts)
    means = (weights * values).sum(1) / weights.sum(1)
    return _interval(means[0].item(), means[1:], level, n_groups, len(values))


def win_rate(
    outcomes: Tensor, prompt_ids: Tensor, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> WinRate:
    """Mean over prompts of each prompt's mean outcome, with a percentile bootstrap interval over prompts.

    Args:
        outcomes: ``[N]`` per-comparison outcomes in [0, 1] (see :func:`pairwise_outcomes`).
        prompt_ids: ``[N]`` which prompt each comparison belongs to.
        resamples: Bootstrap resamples of the prompts.
        level: Coverage of the interval.
        seed: Seeds the resampling, so a report is reproducible.
    """
    return mean_over_prompts(outcomes, prompt_ids, resamples=resamples, level=level, seed=seed)


def _fit_length_logistic(outcomes: Tensor, feature: Tensor, weights: Tensor, l2: float, iterations: int = 25) -> Tensor:
    """``[B]`` intercepts of weighted logistic fits ``outcome ~ sigmoid(theta + phi * feature)``, one per row of
    ``weights`` (``[B, N]``), by Newton's method with a small L2 penalty on ``phi`` (keeps a perfectly separable
    length effect finite)."""
    design = torch.stack([torch.ones_like(feature), feature], dim=1)  # [N, 2]
    params = torch.zeros(weights.shape[0], 2, dtype=torch.float64)
    penalty = torch.tensor([0.0, l2], dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(params @ design.T)  # [B, N]
        gradient = ((weights * (p - outcomes)) @ design) + penalty * params
        curvature = weights * p * (1 - p)
        hessian = torch.einsum("bn,ni,nj->bij", curvature, design, design) + torch.diag(penalty) + 1e-9 * torch.eye(2)
        params = params - torch.linalg.solve(hessian, gradient.unsqueeze(-1)).squeeze(-1)
    return params[:, 0]


def length_controlled_win_rate(
    outcomes: Tensor,
    length_difference: Tensor,
    prompt_ids: Tensor,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    l2: float = 1e-4,
) -> WinRate:
    """The win rate at zero length difference (AlpacaEval 2's length control), with a bootstrap interval over
    prompts.

    Args:
        outcomes: ``[N]`` per-comparison outcomes in [0, 1].
        length_difference: ``[N]`` policy response length minus reference response length (tokens).
        prompt_ids: ``[N]`` which prompt each comparison belongs to.
        l2: Ridge penalty on the length coefficient, relative to the prompt count (weights are per prompt).
    """
    index, n_groups = _group_index(prompt_ids)
    length_difference = length_difference.double()
    scale = length_difference.std() if len(length_difference) > 1 else torch.tensor(0.0, dtype=torch.float64)
    feature = torch.tanh(length_difference / scale) if scale > 0 else torch.zeros_like(length_difference)
    counts = torch.cat([torch.ones(1, n_groups, dtype=torch.float64), _bootstrap_counts(n_groups, resamples, seed)])
    weights = _prompt_weights(index, n_groups, counts)
    rates = torch.sigmoid(_fit_length_logistic(outcomes.double(), feature, weights, l2 * n_groups))
    return _interval(rates[0].item(), rates[1:], level, n_groups, len(outcomes))
