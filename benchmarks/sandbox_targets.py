"""Measure the sandbox targets over several seeds: ``lit-rlhf sandbox run`` once per seed, then
mean ± spread (min..max) of every number in the reports.

    python benchmarks/sandbox_targets.py --out /tmp/targets --seeds 0 1 2

Each seed runs in its own process (so one seed's state cannot leak into the next) and writes
``<out>/seed<N>/report.json``; seeds whose report already exists are not re-run (``--rerun`` to
force). Targets (issue 3): SFT gold clearly above base, PPO gold clearly above SFT, RM held-out
accuracy well above 0.5, PPO without ptx raises the held-out pretraining loss and PPO-ptx less so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_seed(out: Path, seed: int, configs: str) -> float:
    """One whole pipeline in a subprocess; returns its wall time in seconds."""
    started = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    command = [
        sys.executable,
        "-m",
        "lit_rlhf.cli",
        "sandbox",
        "run",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--wandb",
        "false",
        "--configs",
        configs,
    ]
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def flatten(report: dict) -> dict[str, float]:
    """Every number of a report.json as ``section: name`` -> value."""
    flat: dict[str, float] = {}
    for policy, metrics in report.get("policies", {}).items():
        flat.update({f"{policy}: {k}": v for k, v in metrics.items()})
    flat.update({f"RM: {k}": v for k, v in report.get("rm", {}).items()})
    flat.update({f"{run}: final KL": v for run, v in report.get("final_kl", {}).items() if v is not None})
    return flat


def summarise(reports: list[dict]) -> list[tuple[str, float, float, float]]:
    """(name, mean, min, max) of every number present in all reports."""
    flats = [flatten(r) for r in reports]
    names = [k for k in flats[0] if all(k in f for f in flats)]
    return [
        (k, statistics.fmean(f[k] for f in flats), min(f[k] for f in flats), max(f[k] for f in flats)) for k in names
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/targets", help="root of the per-seed run directories")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", default="configs", help="directory holding sft.yaml, rm.yaml and ppo.yaml")
    parser.add_argument("--rerun", action="store_true", help="re-run seeds whose report already exists")
    args = parser.parse_args()

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    reports, times = [], []
    for seed in args.seeds:
        out = root / f"seed{seed}"
        if args.rerun or not (out / "report.json").exists():
            times.append(run_seed(out, seed, args.configs))
            print(f"seed {seed}: {times[-1]:.0f} s", flush=True)
        reports.append(json.loads((out / "report.json").read_text()))

    lines = [
        f"seeds {args.seeds}" + (f"; wall time per seed {statistics.fmean(times):.0f} s" if times else ""),
        "",
        "| metric | mean | ± half-spread | min..max |",
        "|---|---|---|---|",
    ]
    for name, mean, low, high in summarise(reports):
        lines.append(f"| {name} | {mean:.3f} | {(high - low) / 2:.3f} | {low:.3f}..{high:.3f} |")
    text = "\n".join(lines)
    print(text)
    (root / "targets.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
