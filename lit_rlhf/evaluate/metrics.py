"""From the sample rows (``samples.jsonl``) to the numbers of ``results.json``: per policy and judge the mean score,
the win rate against the reference with its bootstrap interval, the length-controlled win rate, the mean length and
the KL to the reference, overall and broken down by a record field.

Everything here is a function of the rows alone, so the results can be recomputed from ``samples.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from lit_rlhf.algorithms.win_rate import length_controlled_win_rate, mean_over_prompts, pairwise_outcomes, win_rate


def sample_key(row: dict[str, Any]) -> tuple[int, int]:
    """Which comparison a row takes part in: its prompt and its sample number there."""
    return int(row["prompt_index"]), int(row["sample"])


def _estimate(value) -> dict[str, float]:
    return {k: v for k, v in asdict(value).items() if k != "level"}


def _policy_numbers(
    rows: list[dict[str, Any]],
    reference_rows: dict[tuple[int, int], dict[str, Any]],
    judges: Sequence[str],
    *,
    resamples: int,
    seed: int,
    tie_tolerance: float,
) -> dict[str, Any]:
    """The numbers of one policy's rows (against the reference's rows of the same comparisons)."""
    prompt_ids = torch.tensor([int(r["prompt_index"]) for r in rows])
    lengths = torch.tensor([float(r["length"]) for r in rows], dtype=torch.float64)
    paired = [reference_rows[sample_key(r)] for r in rows]
    reference_lengths = torch.tensor([float(r["length"]) for r in paired], dtype=torch.float64)
    numbers: dict[str, Any] = {
        "samples": len(rows),
        "prompts": len(set(prompt_ids.tolist())),
        "length": lengths.mean().item(),
        "kl": sum(float(r["kl"]) for r in rows) / len(rows) if all(r.get("kl") is not None for r in rows) else None,
        "score": {},
        "win_rate": {},
        "length_controlled_win_rate": {},
    }
    for judge in judges:
        scores = torch.tensor([float(r["scores"][judge]) for r in rows], dtype=torch.float64)
        reference_scores = torch.tensor([float(r["scores"][judge]) for r in paired], dtype=torch.float64)
        outcomes = pairwise_outcomes(scores, reference_scores, tie_tolerance)
        numbers["score"][judge] = _estimate(mean_over_prompts(scores, prompt_ids, resamples=resamples, seed=seed))
        numbers["win_rate"][judge] = _estimate(win_rate(outcomes, prompt_ids, resamples=resamples, seed=seed))
        controlled = length_controlled_win_rate(
            outcomes, lengths - reference_lengths, prompt_ids, resamples=resamples, seed=seed
        )
        numbers["length_controlled_win_rate"][judge] = _estimate(controlled)
    return numbers


def results_from_samples(
    rows: Sequence[dict[str, Any]],
    *,
    reference: str,
    judges: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    tie_tolerance: float = 0.0,
) -> dict[str, Any]:
    """Per policy (in the order the rows first name them): ``samples``, ``prompts``, ``length`` (mean tokens),
    ``kl`` (mean log-ratio to the reference on the policy's own samples), and per judge ``score`` (mean over
    prompts), ``win_rate`` and ``length_controlled_win_rate`` against the reference (each ``value``, ``low``,
    ``high``, ``prompts``, ``comparisons``); when the rows carry a ``group`` (the value of the ``by`` field of their
    prompt record), the same under ``by_group[<group>]``.

    Sample ``j`` of prompt ``i`` of a policy is compared with sample ``j`` of prompt ``i`` of the reference (every
    policy is sampled with the same seed, so a policy compared with itself ties everywhere: 0.5).
    """
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    by_policy = {name: [r for r in rows if r["policy"] == name] for name in policies}
    if reference not in by_policy:
        raise ValueError(f"the samples hold no rows of the reference policy '{reference}' (policies: {policies})")
    reference_rows = {sample_key(r): r for r in by_policy[reference]}
    for name, own in by_policy.items():
        unpaired = [sample_key(r) for r in own if sample_key(r) not in reference_rows]
        if unpaired:
            raise ValueError(
                f"policy '{name}': sample {unpaired[0][1]} of prompt {unpaired[0][0]} has no reference sample to be "
                f"compared with; every policy needs the reference's prompts and samples_per_prompt"
            )
    options = {"resamples": resamples, "seed": seed, "tie_tolerance": tie_tolerance}
    results: dict[str, Any] = {}
    for name, own in by_policy.items():
        results[name] = _policy_numbers(own, reference_rows, judges, **options)
        groups = sorted({r["group"] for r in own if "group" in r})
        if groups:
            results[name]["by_group"] = {
                group: _policy_numbers([r for r in own if r.get("group") == group], reference_rows, judges, **options)
                for group in groups
            }
    return results
