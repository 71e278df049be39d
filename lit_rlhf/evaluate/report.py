"""What ``lit-rlhf evaluate`` writes: ``samples.jsonl``, ``results.json``, ``report.md`` (its tables, also printed)
and ``pairs.jsonl``, the blind side-by-side file of the labeling app (docs/labeling.md)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from lit_rlhf.atomic import atomic_file


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``rows`` as JSON Lines (UTF-8), written atomically."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def blind_pairs(rows: Sequence[dict[str, Any]], reference: str, seed: int) -> list[dict[str, Any]]:
    """One side-by-side item per policy (other than the reference) and prompt: the policy's first sample against the
    reference's first sample of the same prompt, the sides shuffled by ``seed`` (the app never shows the names)."""
    first = {(r["policy"], r["prompt_index"]): r for r in rows if r["sample"] == 0}
    side = random.Random(seed)
    pairs = []
    for (policy, index), row in first.items():
        if policy == reference:
            continue
        other = first[(reference, index)]
        a, b = (row, other) if side.random() < 0.5 else (other, row)
        pairs.append(
            {
                "id": f"{policy}-vs-{reference}-{index}",
                "prompt": row["prompt"],
                "policy_a": a["policy"],
                "response_a": a["response"],
                "policy_b": b["policy"],
                "response_b": b["response"],
            }
        )
    return pairs


def _num(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def interval(estimate: dict[str, float]) -> str:
    """``0.612 [0.571, 0.650]``."""
    return f"{_num(estimate['value'])} [{_num(estimate['low'])}, {_num(estimate['high'])}]"


def policy_table(results: dict[str, Any]) -> list[str]:
    """Per policy: each judge's mean score, mean length, KL to the reference and held-out loss."""
    judges, reference = results["judges"], results["reference"]
    lines = [
        "| policy | " + " | ".join(f"{j} score" for j in judges) + f" | length (tokens) | KL to {reference} | "
        "held-out loss |",
        "|---" * (len(judges) + 4) + "|",
    ]
    for name, numbers in results["policies"].items():
        scores = " | ".join(interval(numbers["score"][j]) for j in judges)
        lines.append(
            f"| {name} | {scores} | {_num(numbers['length'], 1)} | {_num(numbers['kl'])} "
            f"| {_num(numbers.get('heldout_loss'))} |"
        )
    return lines


def win_rate_table(results: dict[str, Any]) -> list[str]:
    """Per judge and policy: win rate against the reference and the length-controlled win rate, with intervals."""
    reference = results["reference"]
    lines = [
        f"| judge | policy | win rate vs {reference} [95% CI] | length-controlled [95% CI] |",
        "|---|---|---|---|",
    ]
    for judge in results["judges"]:
        for name, numbers in results["policies"].items():
            if name != reference:
                lines.append(
                    f"| {judge} | {name} | {interval(numbers['win_rate'][judge])} "
                    f"| {interval(numbers['length_controlled_win_rate'][judge])} |"
                )
    return lines


def group_table(results: dict[str, Any]) -> list[str]:
    """Per value of the ``by`` field: each policy's judge scores, length and win rates."""
    judges, reference = results["judges"], results["reference"]
    lines = [
        f"| {results['by']} | policy | "
        + " | ".join(f"{j} score | {j} win rate vs {reference}" for j in judges)
        + " | length |",
        "|---" * (2 * len(judges) + 3) + "|",
    ]
    groups = sorted({g for numbers in results["policies"].values() for g in numbers.get("by_group", {})})
    for group in groups:
        for name, numbers in results["policies"].items():
            part = numbers["by_group"].get(group)
            if part is not None:
                cells = " | ".join(
                    f"{_num(part['score'][j]['value'])} | {interval(part['win_rate'][j])}" for j in judges
                )
                lines.append(f"| {group} | {name} | {cells} | {_num(part['length'], 1)} |")
    return lines


def headline(results: dict[str, Any]) -> str:
    """The tables printed at the end of a run."""
    return "\n".join(policy_table(results) + [""] + win_rate_table(results))


def report_markdown(results: dict[str, Any], plots: Sequence[Path]) -> str:
    """``report.md``: the tables, how they were measured, and the plots."""
    settings = results["settings"]
    sampling = settings["sampling"]
    lines = [
        "# Evaluation",
        "",
        f"{settings['prompts']} prompts x {settings['samples_per_prompt']} samples per policy (seed "
        f"{settings['seed']}, max_new_tokens {sampling['max_new_tokens']}, temperature {sampling['temperature']:g},"
        f" top_p {sampling['top_p']:g}). Scores: mean over prompts [95% bootstrap interval over prompts]. "
        f"KL: mean over each policy's own samples of log pi - log pi_{results['reference']} (nats per response).",
        "",
        *policy_table(results),
        "",
        "## Win rates",
        "",
        f"Sample j of each prompt against the reference's sample j of the same prompt; ties count half; mean over "
        f"prompts with a percentile bootstrap interval over prompts ({settings['bootstrap_samples']} resamples). "
        "Length-controlled: the win rate at zero length difference of a logistic fit on tanh(length difference / sd) "
        "(AlpacaEval 2).",
        "",
        *win_rate_table(results),
    ]
    if results.get("by"):
        lines += ["", f"## By {results['by']}", "", *group_table(results)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"
