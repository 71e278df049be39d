"""The sandbox report: did each stage help, by the gold labeler, and what did it cost?"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Optional

from lit_rlhf.recipes.stages import reward_model_accuracy
from lit_rlhf.sandbox.paths import DATA_DIR

#: Policies in the report, in pipeline order: (row label, model directory under the run root or None for the base).
POLICIES = (
    ("base", None),
    ("SFT", "sft/model"),
    ("PPO (no ptx)", "ppo/model"),
    ("PPO-ptx", "ppo_ptx/model"),
    ("DPO", "dpo/model"),
)
#: Report label of each trained policy's stage name (its directory under the run root).
POLICY_LABELS = {subdir.split("/")[0]: label for label, subdir in POLICIES[2:]}
KL_METRIC = "rollout/kl"  # per sequence, summed over response tokens, of the trained policy's rollouts
#: Metric prefix of the GoldProxyKLProbe that the pipeline attaches to PPO: gold, proxy (centred RM) score
#: and KL to SFT of the exported (EMA) policy, measured together on the same held-out samples.
PROBE = "probe"
#: Headline decoding: the policy as PPO trains it (temperature 1, as in the paper's rollouts), averaged
#: over this many samples per held-out prompt so that the mean is low-noise. Greedy is reported beside it.
SAMPLED_TEMPERATURE = 1.0
SAMPLES_PER_PROMPT = 8
MAX_NEW_TOKENS = 24  # as in the PPO rollouts and the RM's comparisons


#: Seed of the report's sampler (every policy is drawn with it) and of its bootstrap intervals.
EVAL_SEED = 1234
#: Sequences per generate call: with the seed, it fixes which samples the report draws.
EVAL_BATCH_SIZE = 64
#: The policy the report's win rates and KL are measured against.
REFERENCE = "SFT"


def gold_results(
    policies: dict[str, str],
    num_prompts: int,
    num_texts: int,
    samples_per_prompt: int = SAMPLES_PER_PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    reference: str = REFERENCE,
    samples_out: Optional[Path] = None,
) -> dict[str, dict[str, float]]:
    """Each policy's report metrics, measured by ``lit-rlhf evaluate``'s path (:mod:`lit_rlhf.evaluate`) with the
    gold labeler as the judge: the sampled gold score (``gold/score``, per family ``gold/score_<family>``), its win
    rate against ``reference`` with a bootstrap interval (``gold/win_rate``, ``_low``, ``_high``) and the
    length-controlled one (``gold/lc_win_rate``), the KL to ``reference`` on the same samples (``kl``), the mean
    length (``length``), the greedy gold score (``gold_greedy/score``) and the held-out pretraining loss
    (``heldout/lm_loss``). ``samples_out``: also write the sampled rows there (as evaluate's samples.jsonl)."""
    from lit_rlhf.data.records import read_records
    from lit_rlhf.engines.base import SamplingSettings
    from lit_rlhf.evaluate import evaluate_policies, read_prompts, results_from_samples
    from lit_rlhf.evaluate.report import write_jsonl
    from lit_rlhf.models.loading import load_tokenizer
    from lit_rlhf.sandbox.rewards import GoldReward

    prompts = read_prompts(
        str(DATA_DIR / "prompts_eval.jsonl"), load_tokenizer(policies[reference]), num_prompts=num_prompts
    )
    texts = [r.data["text"] for r in read_records(str(DATA_DIR / "pretrain_heldout.txt"))[:num_texts]]
    runs = {}
    for prefix, temperature, k in (("gold", SAMPLED_TEMPERATURE, samples_per_prompt), ("gold_greedy", 0.0, 1)):
        rows, heldout = evaluate_policies(
            policies,
            reference,
            prompts,
            [GoldReward(name="gold")],
            settings=SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature),
            samples_per_prompt=k,
            seed=EVAL_SEED,
            batch_size=EVAL_BATCH_SIZE,
            by="family",
            texts=texts if prefix == "gold" else (),
        )
        if prefix == "gold" and samples_out is not None:
            write_jsonl(samples_out, rows)
        results = results_from_samples(rows, reference=reference, judges=["gold"], seed=EVAL_SEED)
        runs[prefix] = (results, heldout)
    (sampled, heldout), (greedy, _) = runs["gold"], runs["gold_greedy"]
    metrics = {}
    for name, numbers in sampled.items():
        win, controlled = numbers["win_rate"]["gold"], numbers["length_controlled_win_rate"]["gold"]
        metrics[name] = {
            "gold/score": numbers["score"]["gold"]["value"],
            **{f"gold/score_{g}": part["score"]["gold"]["value"] for g, part in numbers["by_group"].items()},
            "gold_greedy/score": greedy[name]["score"]["gold"]["value"],
            "heldout/lm_loss": heldout[name],
            "gold/win_rate": win["value"],
            "gold/win_rate_low": win["low"],
            "gold/win_rate_high": win["high"],
            "gold/lc_win_rate": controlled["value"],
            "kl": numbers["kl"],
            "length": numbers["length"],
        }
    return metrics


def gold_metrics(
    model_dir: str,
    num_prompts: int,
    num_texts: int,
    samples_per_prompt: int = SAMPLES_PER_PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict[str, float]:
    """Gold score (sampled and greedy, overall and per family) and held-out pretraining loss of one policy directory
    (:func:`gold_results` of that policy alone)."""
    return gold_results({"policy": model_dir}, num_prompts, num_texts, samples_per_prompt, max_new_tokens, "policy")[
        "policy"
    ]


def read_csv_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a Lightning CSVLogger metrics.csv, as floats (empty cells dropped)."""
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def last_value(rows: list[dict[str, float]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def probe_points(rows: list[dict[str, float]]) -> list[tuple[float, float, float]]:
    """``(KL, gold, proxy)`` of every probe measurement in a PPO run's metrics: all three from the same
    policy's samples (:class:`~lit_rlhf.sandbox.callbacks.GoldProxyKLProbe`), in training order."""
    return [
        (r[f"{PROBE}/kl"], r[f"{PROBE}/gold"], r.get(f"{PROBE}/proxy", math.nan)) for r in rows if f"{PROBE}/kl" in r
    ]


def plot_gold_vs_kl(rows_by_run: dict[str, list[dict[str, float]]], out: Path) -> Optional[Path]:
    """Gold score and RM (proxy) score against KL to the SFT policy, over PPO training. Each point is one
    probe measurement: gold, proxy and KL of the same (EMA) policy on the same held-out samples; the
    first is the SFT policy itself (rollout 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gold_ax, proxy_ax) = plt.subplots(1, 2, figsize=(10, 4))
    plotted = False
    for run, rows in rows_by_run.items():
        points = probe_points(rows)
        if not points:
            continue
        kl, gold, proxy = zip(*points)
        gold_ax.plot(kl, gold, marker="o", ms=4, label=run)
        proxy_ax.plot(kl, proxy, marker="s", ms=4, label=run)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    for ax, title in (
        (gold_ax, f"gold score (held-out prompts, T={SAMPLED_TEMPERATURE:g})"),
        (proxy_ax, "RM (proxy) score, same samples"),
    ):
        ax.set_xlabel("KL(policy || SFT) per sequence, nats (same samples)")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _first_present(*values: Optional[float]) -> Optional[float]:
    return next((v for v in values if v is not None), None)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def write_report(
    root: Path,
    base_model: str,
    num_prompts: int = 200,
    num_texts: int = 400,
    samples_per_prompt: int = SAMPLES_PER_PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    costs: Optional[dict[str, dict]] = None,
) -> Path:
    """Evaluate every stage's output under ``root``; write report.md, report.json and gold_vs_kl.png.

    ``costs`` (stage -> wall_s, peak_rss_gib) becomes the report's cost table, with this evaluation's own
    time as its last row.
    """
    started = time.perf_counter()
    policies = {
        label: base_model if subdir is None else str(root / subdir)
        for label, subdir in POLICIES
        if subdir is None or (root / subdir).exists()  # the base may be a hub id or a pkg: source
    }
    results: dict = {
        "policies": gold_results(
            policies,
            num_prompts,
            num_texts,
            samples_per_prompt,
            max_new_tokens,
            samples_out=root / "report_samples.jsonl",
        )
    }
    results["rm"] = reward_model_accuracy(str(root / "rm/model"), str(root / "comparisons/val.jsonl"), max_length=128)
    runs = {
        label: read_csv_metrics(root / subdir.replace("/model", "/csv/metrics.csv"))
        for label, subdir in POLICIES[2:]
        if label in results["policies"]
    }
    # The exported policy's KL (the probe measures the EMA); the trained policy's rollout KL where no probe ran.
    results["final_kl"] = {
        run: _first_present(last_value(rows, f"{PROBE}/kl"), last_value(rows, KL_METRIC)) for run, rows in runs.items()
    }
    plot = plot_gold_vs_kl(runs, root / "gold_vs_kl.png")

    lines = [
        f"| policy | gold score (T={SAMPLED_TEMPERATURE:g} samples, as trained) | gold score (greedy) | held-out "
        f"pretraining loss | gold win rate vs {REFERENCE} [95% CI] | KL to {REFERENCE} (same samples) | final KL to "
        "SFT (probe) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, metrics in results["policies"].items():
        win = f"{_fmt(metrics['gold/win_rate'])} [{_fmt(metrics['gold/win_rate_low'])}, "
        lines.append(
            f"| {label} | {_fmt(metrics.get('gold/score'))} | {_fmt(metrics.get('gold_greedy/score'))} "
            f"| {_fmt(metrics.get('heldout/lm_loss'))} | {win}{_fmt(metrics['gold/win_rate_high'])}] "
            f"| {_fmt(metrics['kl'])} | {_fmt(results['final_kl'].get(label))} |"
        )
    lines += [
        "",
        f"Gold score: mean over {num_prompts} held-out prompts; T={SAMPLED_TEMPERATURE:g}: {samples_per_prompt} "
        f"samples each (seed {EVAL_SEED}); greedy: one. Measured by `lit-rlhf evaluate`'s code "
        "(configs/evaluate/sandbox.yaml gives the same numbers): win rate = sample j against SFT's sample j of the "
        "same prompt, ties half, bootstrap interval over prompts; KL = mean log pi - log pi_SFT on the policy's own "
        "samples. The samples: report_samples.jsonl.",
    ]
    families = sorted({k for m in results["policies"].values() for k in m if k.startswith("gold/score_")})
    lines += [
        "",
        f"Per family (T={SAMPLED_TEMPERATURE:g} samples):",
        "",
        "| policy | " + " | ".join(f.removeprefix("gold/score_") for f in families) + " |",
        "|---" * (len(families) + 1) + "|",
    ]
    for label, metrics in results["policies"].items():
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics.get(f), 2) for f in families) + " |")
    rm = results["rm"]
    lines += [
        "",
        f"RM held-out accuracy: {_fmt(rm.get('val/accuracy'))} (best vs worst "
        f"{_fmt(rm.get('val/accuracy_best_vs_worst'))}, adjacent ranks {_fmt(rm.get('val/accuracy_adjacent'))}; "
        "chance 0.5)",
    ]
    if plot:
        lines.append(
            "Gold and RM score against KL (each point: the exported EMA policy, all three on the same samples; lines "
            f"join them in training order): {plot}"
        )
    if costs is not None:
        results["costs"] = {
            **costs,
            "evaluation (this report)": {"wall_s": time.perf_counter() - started, "peak_rss_gib": None},
        }
        lines += ["", "| stage | wall time | peak memory (process RSS) |", "|---|---|---|"]
        for stage, cost in results["costs"].items():
            memory = "—" if cost["peak_rss_gib"] is None else f"{cost['peak_rss_gib']:.2f} GiB"
            lines.append(f"| {stage} | {cost['wall_s'] / 60:.1f} min | {memory} |")
    text = "\n".join(lines)
    print("\n" + text + "\n", flush=True)
    (root / "report.md").write_text(text + "\n")
    (root / "report.json").write_text(json.dumps(results, indent=2))
    return root / "report.md"
