"""The evaluation's pictures: win rate per policy with its interval, judge score against KL, response lengths.

Drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly: no pyplot state, no backend switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _figure(panels: int, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * panels, height))
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, panels, i + 1) for i in range(panels)]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_win_rates(results: dict[str, Any], path: Path) -> Path:
    """One panel per judge: each policy's win rate against the reference with its 95% interval, 0.5 dashed."""
    reference, judges = results["reference"], results["judges"]
    names = [name for name in results["policies"] if name != reference]
    figure, axes = _figure(len(judges))
    for ax, judge in zip(axes, judges):
        rates = [results["policies"][name]["win_rate"][judge] for name in names]
        values = [r["value"] for r in rates]
        errors = [[r["value"] - r["low"] for r in rates], [r["high"] - r["value"] for r in rates]]
        ax.errorbar(range(len(names)), values, yerr=errors, fmt="o", capsize=6, color="tab:blue")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_title(f"{judge}: win rate vs {reference} (95% CI)")
        ax.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def plot_score_vs_kl(results: dict[str, Any], path: Path) -> Path:
    """One panel per judge: each policy's mean score (with its interval) against its KL to the reference."""
    judges = results["judges"]
    figure, axes = _figure(len(judges))
    for ax, judge in zip(axes, judges):
        for name, numbers in results["policies"].items():
            score, kl = numbers["score"][judge], numbers["kl"] or 0.0
            ax.errorbar(
                [kl], [score["value"]], yerr=[[score["value"] - score["low"]], [score["high"] - score["value"]]],
                fmt="o", capsize=4, label=name,
            )  # fmt: skip
        ax.set_xlabel(f"KL to {results['reference']} (nats per response, own samples)")
        ax.set_ylabel(f"{judge} score")
        ax.set_title(f"{judge} score against KL")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(figure, path)


def plot_lengths(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Histogram of response lengths (tokens) of each policy, on shared bins."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    lengths = {name: [r["length"] for r in rows if r["policy"] == name] for name in policies}
    longest = max(max(values) for values in lengths.values())
    bins = [b - 0.5 for b in range(0, int(longest) + 2)]
    figure, (ax,) = _figure(1, height=3.6)
    for name, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel("response length (tokens, EOS included)")
    ax.set_ylabel("samples")
    ax.set_title("response lengths")
    ax.legend(fontsize=8)
    return _save(figure, path)


def write_plots(results: dict[str, Any], rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """``win_rates.png`` (when there is a policy besides the reference and a judge), ``score_vs_kl.png`` (with a
    judge) and ``lengths.png`` under ``out``."""
    plots = []
    if results["judges"] and len(results["policies"]) > 1:
        plots.append(plot_win_rates(results, out / "win_rates.png"))
    if results["judges"]:
        plots.append(plot_score_vs_kl(results, out / "score_vs_kl.png"))
    plots.append(plot_lengths(rows, out / "lengths.png"))
    return plots
