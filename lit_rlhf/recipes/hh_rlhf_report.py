"""The HH-RLHF recipe's report: did PPO beat SFT under the held-out judge, at what KL and length, and what did each
stage cost? Built from ``lit-rlhf evaluate``'s ``results.json`` and the stages' recorded costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from lit_rlhf.atomic import atomic_file

#: The judges the recipe evaluates with, in report order, and what each is.
JUDGES = {
    "judge_rm": "held-out judge RM (disjoint comparisons, never seen by PPO)",
    "proxy_rm": "proxy RM (the one PPO optimised)",
}


def _number(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(estimate: Optional[dict[str, Any]]) -> str:
    if not estimate:
        return "–"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def summary(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per policy: per judge its win rate against the reference (with the 95% interval) and its length-controlled
    win rate; its KL to the reference, mean length in tokens and held-out loss."""
    rows = {}
    for name, numbers in evaluation["policies"].items():
        rows[name] = {
            "win_rate": {judge: numbers["win_rate"].get(judge) for judge in evaluation["judges"]},
            "length_controlled_win_rate": {
                judge: numbers["length_controlled_win_rate"].get(judge) for judge in evaluation["judges"]
            },
            "score": {judge: numbers["score"].get(judge) for judge in evaluation["judges"]},
            "kl": numbers.get("kl"),
            "length": numbers.get("length"),
            "heldout_loss": numbers.get("heldout_loss"),
        }
    return rows


def report_markdown(
    evaluation: Optional[dict[str, Any]],
    costs: dict[str, dict],
    split: Optional[dict],
    accuracy: Optional[dict[str, dict[str, float]]] = None,
) -> str:
    lines = ["# HH-RLHF recipe", ""]
    if split:
        parts = ", ".join(f"{name} {n}" for name, n in split["parts"].items())
        lines += [
            f"Data: {split['records']} comparisons of {split['source']}, split with seed {split['seed']}: {parts}.",
            "",
        ]
    if evaluation:
        reference = evaluation["reference"]
        judges = [judge for judge in JUDGES if judge in evaluation["judges"]] + [
            judge for judge in evaluation["judges"] if judge not in JUDGES
        ]
        lines += [
            f"Win rates against {reference} with bootstrap 95% intervals over prompts (ties count half); "
            "length-controlled (LC) win rates regress out the length difference.",
            "",
            "| policy | "
            + " | ".join(f"win rate, {j} | LC win rate, {j}" for j in judges)
            + " | KL to "
            + reference
            + " | mean length (tokens) | held-out loss |",
            "|---" * (2 * len(judges) + 4) + "|",
        ]
        for name, row in summary(evaluation).items():
            cells = []
            for judge in judges:
                cells += [_interval(row["win_rate"][judge]), _interval(row["length_controlled_win_rate"][judge])]
            lines.append(
                f"| {name} | "
                + " | ".join(cells)
                + f" | {_number(row['kl'])} | {_number(row['length'], 1)} | {_number(row['heldout_loss'])} |"
            )
        lines += ["", *(f"- {judge}: {JUDGES[judge]}" for judge in judges if judge in JUDGES), ""]
        lines += ["Samples, plots and pairs for side-by-side labeling: `evaluate/`.", ""]
    else:
        lines += ["No evaluation yet (`evaluate/results.json` is missing).", ""]
    if accuracy:
        parts = list(next(iter(accuracy.values())))
        lines += [
            "Reward models' accuracy on held-out comparisons (the chosen reply scored higher):",
            "",
            "| reward model | " + " | ".join(parts) + " |",
            "|---" * (len(parts) + 1) + "|",
            *(f"| {judge} | " + " | ".join(f"{row[p]:.3f}" for p in parts) + " |" for judge, row in accuracy.items()),
            "",
        ]
    if costs:
        lines += ["| stage | wall time (min) | peak memory (GiB, process RSS) |", "|---|---|---|"]
        for stage, cost in costs.items():
            lines.append(f"| {stage} | {cost['wall_s'] / 60:.1f} | {_number(cost.get('peak_rss_gib'), 2)} |")
        lines.append("")
    return "\n".join(lines)


def write_report(root: Path, costs: dict[str, dict]) -> Path:
    """``<root>/report.md`` and ``<root>/results.json`` (split sizes, per-policy summary, the reward models'
    held-out accuracy, stage costs)."""
    results_file, split_file = root / "evaluate/results.json", root / "data/split.json"
    evaluation = json.loads(results_file.read_text()) if results_file.is_file() else None
    split = json.loads(split_file.read_text()) if split_file.is_file() else None
    accuracy_file = root / "rm_accuracy.json"
    accuracy = json.loads(accuracy_file.read_text())["accuracy"] if accuracy_file.is_file() else None
    results = {
        "split": split,
        "rm_accuracy": accuracy,
        "reference": evaluation["reference"] if evaluation else None,
        "judges": evaluation["judges"] if evaluation else [],
        "policies": summary(evaluation) if evaluation else {},
        "costs": costs,
    }
    with atomic_file(root / "results.json") as f:
        json.dump(results, f, indent=1)
    with atomic_file(root / "report.md") as f:
        f.write(report_markdown(evaluation, costs, split, accuracy))
    return root / "report.md"
