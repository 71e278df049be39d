"""lit-rlhf against an earlier commit of itself, stage by stage, on the same work in the same run.

    python benchmarks/compare_commits.py --baseline c8236ee --stage all     # about 15 min on 2 CPU cores

The baseline commit is checked out into a temporary git worktree; every measurement is a fresh
``compare_lit.py`` worker process of one tree (each tree runs its own worker script, so a renamed
option does not break the baseline) on the shared workload of ``compare_workspace.py``. Workers run
alternately, current then baseline, for ``--pairs`` pairs per stage; each pair gives one ratio
current / baseline, and the table shows their min, median and max with the load average before each
pair, so load from other processes hits both trees alike. A refactor that should not change speed shows
ratios around 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import RATES, STAGES, report, run_worker  # noqa: E402
from compare_workspace import build_workspace  # noqa: E402

ROOT = HERE.parent


def baseline_tree(revision: str, parent: Path) -> Path:
    """A worktree of ``revision`` under ``parent`` (made once, reused while it exists)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = parent / f"baseline-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), commit], cwd=ROOT, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--baseline", required=True, help="the commit to compare against (any git revision)")
    parser.add_argument("--stage", choices=["sft", "rm", "ppo", "all"], default="all")
    parser.add_argument("--pairs", type=int, default=3, help="current / baseline run pairs per stage")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lit-rlhf-compare",
        help="where the shared models and data are written (reused when unchanged)",
    )
    args = parser.parse_args()

    keys = ("sft", "rm", "ppo") if args.stage == "all" else [args.stage]  # the stages compare_lit.py runs
    stages = [s for key in keys for s in STAGES[key]]
    build_workspace(args.workspace)
    baseline = baseline_tree(args.baseline, args.workspace)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    log = args.workspace / "commits.log"
    log.write_text("")
    rows, loads = [], []
    for stage in stages:
        pairs = []
        for pair in range(args.pairs):
            loads.append(os.getloadavg()[0])
            current = run_worker(sys.executable, "compare_lit.py", stage, args.workspace, args.threads, log)
            before = run_worker(sys.executable, "compare_lit.py", stage, args.workspace, args.threads, log, baseline)
            pairs.append((current, before))
            rates = "  ".join(
                f"{name} {current[c] / current['seconds']:.1f} vs {before[c] / before['seconds']:.1f}"
                for name, c in RATES[stage]
            )
            print(f"[{stage} pair {pair + 1}/{args.pairs}, load {loads[-1]:.1f}] {rates}", flush=True)
        rows += report(stage, pairs)  # the same row layout: current in the first column, baseline in the second
    print(
        f"\ncurrent {head.strip()} against baseline {args.baseline}; torch threads {args.threads}; {args.pairs} "
        f"alternating pairs per stage; load average before the pairs {min(loads):.1f}..{max(loads):.1f}.\n"
    )
    print("| stage | metric | current | baseline | ratio min / median / max | current GiB | baseline GiB |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
