"""lit-rlhf against Hugging Face TRL, stage by stage, on the same work in the same run.

    python benchmarks/compare.py --stage all          # sft, rm (K=4 and K=9) and ppo; about 12 min on 2 CPU cores

Every measurement is a fresh worker process (``compare_lit.py``, ``compare_trl.py``,
``compare_trl_ppo.py``) that trains one stage on the shared workload of ``compare_workspace.py``
(same initial weights, records, sequence lengths, batch sizes, fp32 precision and optimizer steps)
and reports its counters after the warm-up steps. Workers run alternately, lit-rlhf then TRL, for
``--pairs`` pairs; each pair gives one ratio lit-rlhf / TRL, and the table shows their min, median
and max, so load from other processes hits both frameworks alike.

TRL is not a dependency of lit-rlhf and this script installs nothing. The reference is TRL's
current release for SFT and RM and its last release with ``PPOTrainer`` (1.12.0; later releases
removed it) for PPO, each in its own venv over this environment, so torch and transformers are the
very same and the main environment is untouched::

    python -m venv --system-site-packages .venv-trl && .venv-trl/bin/pip install "trl==1.16.0"
    python -m venv --system-site-packages .venv-trl-ppo && .venv-trl-ppo/bin/pip install "trl==1.12.0"

The PPO rows also report the ceiling inside lit-rlhf's own process: bare HF ``generate`` tokens/s
and bare forward+backward tokens/s of the same models, and lit-rlhf's rollout generation and update
phases as fractions of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_common import INSTALL, RESULT_PREFIX  # noqa: E402
from compare_workspace import build_workspace  # noqa: E402

ROOT = HERE.parent
STAGES = {"sft": ["sft"], "rm": ["rm4", "rm9"], "ppo": ["ppo"]}
#: stage -> (headline metric name, counter it divides by seconds)
RATES = {
    "sft": [("tokens/s", "tokens")],
    "rm4": [("comparisons/s", "comparisons")],
    "rm9": [("comparisons/s", "comparisons")],
    "ppo": [("episodes/s", "episodes"), ("generated tokens/s", "generated_tokens")],
}


def default_python(venv: str) -> str:
    candidate = ROOT / venv / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def check_trl(python: str, module: str, install: str) -> str:
    """The TRL version importable by ``python`` with ``module``, or exit with what to install."""
    probe = subprocess.run(
        [python, "-c", f"import trl, {module}; print(trl.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    if probe.returncode:
        sys.exit(
            f"{python} cannot import {module}: install TRL beside lit-rlhf (nothing in the main environment changes):\n"
            f"    {install}\nthen rerun (the venvs in the repository root are found by themselves)."
        )
    return probe.stdout.strip().splitlines()[-1]


def run_worker(
    python: str, script: str, stage: str, workspace: Path, threads: int, log: Path, tree: Path = ROOT
) -> dict:
    """One worker process: ``tree``'s ``benchmarks/<script>`` with ``tree`` first on the import path (an earlier
    commit's worktree, for ``compare_commits.py``); its result line as a dict."""
    command = [python, str(tree / "benchmarks" / script), "--workspace", str(workspace), "--threads", str(threads)]
    if script != "compare_trl_ppo.py":
        command += ["--stage", stage]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env)
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}\n")
    results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not results:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        sys.exit(f"worker failed (exit {done.returncode}): {' '.join(command)}\n{tail}\nfull output: {log}")
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def report(stage: str, pairs: list[tuple[dict, dict]]) -> list[str]:
    """Markdown rows: each rate of the stage for both frameworks (medians), the ratio's min / median / max, memory."""
    rows = []
    for name, counter in RATES[stage]:
        lit = [a[counter] / a["seconds"] for a, _ in pairs]
        trl = [b[counter] / b["seconds"] for _, b in pairs]
        ratios = [x / y for x, y in zip(lit, trl)]
        rows.append(
            f"| {stage} | {name} | {statistics.median(lit):.1f} | {statistics.median(trl):.1f} | {spread(ratios)} "
            f"| {statistics.median(a['peak_rss_gib'] for a, _ in pairs):.2f} | "
            f"{statistics.median(b['peak_rss_gib'] for _, b in pairs):.2f} |"
        )
    return rows


def ceiling_rows(pairs: list[tuple[dict, dict]]) -> list[str]:
    lits = [a for a, _ in pairs]

    def med(key: str) -> float:
        return statistics.median(a[key] for a in lits)

    generate = [a["alternated_generate_tokens_per_s"] / a["bare_generate_tokens_per_s"] for a in lits]
    in_training = [a["generate_tokens_per_s"] / a["bare_generate_tokens_per_s"] for a in lits]
    update = [a["update_tokens_per_s"] / a["bare_fwd_bwd_tokens_per_s"] for a in lits]
    return [
        f"| rollout generation, alternated with bare `generate` | {med('alternated_generate_tokens_per_s'):.1f} | "
        f"{med('bare_generate_tokens_per_s'):.1f} (bare `generate`) | {spread(generate)} |",
        f"| rollout generation, inside training | {med('generate_tokens_per_s'):.1f} | "
        f"{med('bare_generate_tokens_per_s'):.1f} (bare `generate`) | {spread(in_training)} |",
        f"| update phase, inside training | {med('update_tokens_per_s'):.1f} | {med('bare_fwd_bwd_tokens_per_s'):.1f} "
        f"(bare fwd+bwd, policy + value) | {spread(update)} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--stage", choices=["sft", "rm", "ppo", "all"], default="all")
    parser.add_argument(
        "--pairs", type=int, default=3, help="lit-rlhf / TRL run pairs per stage (at least 3 for min/median/max)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lit-rlhf-compare",
        help="where the shared models and data are written (reused when unchanged)",
    )
    parser.add_argument("--trl-python", default=default_python(".venv-trl"), help="Python with TRL >= 1.14 (SFT, RM)")
    parser.add_argument(
        "--trl-ppo-python", default=default_python(".venv-trl-ppo"), help="Python with TRL 1.12.0 (PPO)"
    )
    parser.add_argument("--json", type=Path, help="also write every worker's result here")
    args = parser.parse_args()

    stages = [s for key in (STAGES if args.stage == "all" else [args.stage]) for s in STAGES[key]]
    versions = {}
    if any(s != "ppo" for s in stages):
        versions["trl"] = check_trl(args.trl_python, "trl.trainer.reward_trainer", INSTALL["trl"])
    if "ppo" in stages:
        versions["trl-ppo"] = check_trl(args.trl_ppo_python, "trl.experimental.ppo", INSTALL["trl-ppo"])
    build_workspace(args.workspace)
    log = args.workspace / "workers.log"
    log.write_text("")

    results: dict[str, list[tuple[dict, dict]]] = {}
    for stage in stages:
        trl_python, trl_script = (
            (args.trl_ppo_python, "compare_trl_ppo.py") if stage == "ppo" else (args.trl_python, "compare_trl.py")
        )
        results[stage] = []
        for pair in range(args.pairs):
            lit = run_worker(sys.executable, "compare_lit.py", stage, args.workspace, args.threads, log)
            trl = run_worker(trl_python, trl_script, stage, args.workspace, args.threads, log)
            results[stage].append((lit, trl))
            rates = "  ".join(
                f"{name} {lit[c] / lit['seconds']:.1f} vs {trl[c] / trl['seconds']:.1f}" for name, c in RATES[stage]
            )
            print(f"[{stage} pair {pair + 1}/{args.pairs}] {rates}", flush=True)

    print(
        f"\nTRL versions: {versions}; torch threads {args.threads}; {args.pairs} alternating pairs per stage; "
        "warm-up excluded."
    )
    print(
        "Rates are medians over the pairs; the ratio is lit-rlhf / TRL per pair (min / median / max); memory is each "
        "worker process's peak RSS (median).\n"
    )
    print("| stage | metric | lit-rlhf | TRL | ratio min / median / max | lit-rlhf GiB | TRL GiB |")
    print("|---|---|---|---|---|---|---|")
    for stage, pairs in results.items():
        print("\n".join(report(stage, pairs)))
    padded = [stage for stage in results if "positions" in results[stage][0][0]]
    if padded:
        print(
            "\nWork per measured step (medians): sequences forwarded, and real tokens / forwarded positions "
            "(the rest is padding):\n"
        )
        print("| stage | lit-rlhf sequences | TRL sequences | lit-rlhf tokens / positions | TRL tokens / positions |")
        print("|---|---|---|---|---|")
        for stage in padded:

            def med(side: int, key: str, pairs: list = results[stage]) -> float:
                return statistics.median(pair[side][key] / pair[side]["measured_steps"] for pair in pairs)

            def fill(side: int, pairs: list = results[stage]) -> float:
                return statistics.median(pair[side]["tokens"] / pair[side]["positions"] for pair in pairs)

            print(
                f"| {stage} | {med(0, 'sequences'):.0f} | {med(1, 'sequences'):.0f} | {fill(0):.2f} | {fill(1):.2f} |"
            )
    if "ppo" in results:
        print("\nPPO phases against the ceiling in lit-rlhf's own process (tokens/s; fraction min / median / max):\n")
        print("| phase | lit-rlhf | ceiling | fraction |")
        print("|---|---|---|---|")
        print("\n".join(ceiling_rows(results["ppo"])))
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
