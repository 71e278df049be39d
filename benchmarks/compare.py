"""lit-rlhf against Hugging Face TRL, stage by stage, on the same work in the same run.

    python benchmarks/compare.py --stage all          # every row below; about 45 min on 2 quiet CPU cores
    python benchmarks/compare.py --stage grpo         # or sft, rm, ppo, dpo, ppo-vllm, async

Every measurement is a fresh worker process (``compare_lit.py``, ``compare_lit_rl.py``, ``compare_trl.py``,
``compare_trl_grpo.py``, ``compare_trl_ppo.py``) that trains one stage on the shared workload of
``compare_workspace.py`` (same initial weights, records, sequence lengths, batch sizes, fp32 precision and
optimizer steps) and reports its counters after the warm-up steps. Workers run alternately, lit-rlhf then the
reference, for ``--pairs`` pairs; each pair gives one ratio lit-rlhf / reference, and the table shows their min,
median and max, so load from other processes hits both alike. The 1-minute load average before each pair is
printed with it and summarised under the table.

The rows: ``sft``, ``rm4``, ``rm9`` against TRL's SFT and reward trainers; ``ppo`` against TRL 1.12's
``PPOTrainer``; ``grpo`` against TRL's ``GRPOTrainer`` and ``dpo`` against its ``DPOTrainer``; ``ppo-vllm``,
lit-rlhf's PPO with its vLLM engine, against TRL 1.12's PPO; ``async``, lit-rlhf's PPO with the vLLM engine at
``batch.max_staleness`` 1 against the same at 0 (both lit-rlhf). The last two run lit-rlhf in the vllm
environment of docs/engines.md (``--vllm-python``, default ``.venv-vllm``).

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
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_common import INSTALL, RESULT_PREFIX  # noqa: E402
from compare_workspace import build_workspace  # noqa: E402

ROOT = HERE.parent
STAGES = {
    "sft": ["sft"],
    "rm": ["rm4", "rm9"],
    "ppo": ["ppo"],
    "grpo": ["grpo"],
    "dpo": ["dpo"],
    "ppo-vllm": ["ppo-vllm"],
    "async": ["async"],
}
EPISODES = [("episodes/s", "episodes"), ("generated tokens/s", "generated_tokens")]
#: stage -> (headline metric name, counter it divides by seconds)
RATES = {
    "sft": [("tokens/s", "tokens")],
    "rm4": [("comparisons/s", "comparisons")],
    "rm9": [("comparisons/s", "comparisons")],
    "ppo": EPISODES,
    "grpo": EPISODES,
    "dpo": [("pairs/s", "pairs")],
    "ppo-vllm": EPISODES,
    "async": EPISODES,
}
#: the two columns of a stage's rows (first / second, the ratio is first / second)
SIDES = {"async": ("async (max_staleness 1)", "sync (max_staleness 0)")}
DEFAULT_SIDES = ("lit-rlhf", "reference")
#: what each stage's reference is, for the table's title
REFERENCE = {
    "ppo": "TRL 1.12 PPOTrainer",
    "ppo-vllm": "TRL 1.12 PPOTrainer",
    "grpo": "TRL GRPOTrainer",
    "dpo": "TRL DPOTrainer",
    "async": "lit-rlhf sync",
}


@dataclass(frozen=True)
class Worker:
    """One side of a pair: the interpreter, the worker script and its extra arguments."""

    python: str
    script: str
    extra: tuple[str, ...] = ()


def workers(stage: str, lit: str, trl: str, trl_ppo: str, vllm: str) -> tuple[Worker, Worker]:
    """(lit-rlhf side, reference side) of ``stage``, given the four interpreters."""
    if stage == "async":
        return (
            Worker(vllm, "compare_lit_rl.py", ("--max_staleness", "1")),
            Worker(vllm, "compare_lit_rl.py", ("--max_staleness", "0")),
        )
    if stage == "ppo-vllm":
        return Worker(vllm, "compare_lit_rl.py"), Worker(trl_ppo, "compare_trl_ppo.py")
    if stage == "ppo":
        return Worker(lit, "compare_lit.py"), Worker(trl_ppo, "compare_trl_ppo.py")
    if stage == "grpo":
        return Worker(lit, "compare_lit_rl.py"), Worker(trl, "compare_trl_grpo.py")
    return Worker(lit, "compare_lit_rl.py" if stage == "dpo" else "compare_lit.py"), Worker(trl, "compare_trl.py")


def default_python(venv: str) -> str:
    candidate = ROOT / venv / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def check_trl(python: str, module: str, install: str, package: str = "trl") -> str:
    """The version of ``package`` importable by ``python`` with ``module``, or exit with what to install."""
    probe = subprocess.run(
        [python, "-c", f"import {package}, {module}; print({package}.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    if probe.returncode:
        sys.exit(
            f"{python} cannot import {module}: install {package} beside lit-rlhf (nothing in the main environment "
            "changes):\n"
            f"    {install}\nthen rerun (the venvs in the repository root are found by themselves)."
        )
    return probe.stdout.strip().splitlines()[-1]


def run_worker(
    python: str,
    script: str,
    stage: str,
    workspace: Path,
    threads: int,
    log: Path,
    tree: Path = ROOT,
    extra: tuple[str, ...] = (),
) -> dict:
    """One worker process: ``tree``'s ``benchmarks/<script>`` with ``tree`` first on the import path (an earlier
    commit's worktree, for ``compare_commits.py``) and ``extra`` arguments; its result line as a dict."""
    command = [python, str(tree / "benchmarks" / script), "--workspace", str(workspace), "--threads", str(threads)]
    if script != "compare_trl_ppo.py":
        command += ["--stage", stage]
    command += list(extra)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env)
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}\n")
    try:
        if done.returncode:
            raise KeyError(f"exit {done.returncode}")
        return parse_result(done.stdout)
    except KeyError as failure:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        sys.exit(f"worker failed ({failure}): {' '.join(command)}\n{tail}\nfull output: {log}")


def parse_result(stdout: str) -> dict:
    """The last ``RESULT {json}`` line of a worker's stdout as a dict; KeyError when there is none."""
    results = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not results:
        raise KeyError("no result line")
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


def print_tables(results: dict[str, list[tuple[dict, dict]]]) -> None:
    """One table per pair of sides (lit-rlhf / reference, async / sync), the padding table and the PPO ceilings."""
    print(
        "Rates are medians over the pairs; the ratio is the first column / the second per pair (min / median / max); "
        "memory is each worker process's peak RSS (median)."
    )
    for sides in dict.fromkeys(SIDES.get(stage, DEFAULT_SIDES) for stage in results):
        stages = [stage for stage in results if SIDES.get(stage, DEFAULT_SIDES) == sides]
        references = ", ".join(f"{stage}: {REFERENCE[stage]}" for stage in stages if stage in REFERENCE)
        print(f"\n{sides[0]} against {sides[1]}" + (f" ({references})" if references else " (TRL's trainer)") + ":\n")
        print(
            f"| stage | metric | {sides[0]} | {sides[1]} | ratio min / median / max | {sides[0]} GiB | {sides[1]} GiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for stage in stages:
            print("\n".join(report(stage, results[stage])))
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument(
        "--pairs", type=int, default=3, help="lit-rlhf / reference run pairs per stage (at least 3 for min/median/max)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lit-rlhf-compare",
        help="where the shared models and data are written (reused when unchanged)",
    )
    parser.add_argument(
        "--trl-python", default=default_python(".venv-trl"), help="Python with TRL >= 1.14 (SFT, RM, GRPO, DPO)"
    )
    parser.add_argument(
        "--trl-ppo-python", default=default_python(".venv-trl-ppo"), help="Python with TRL 1.12.0 (PPO)"
    )
    parser.add_argument(
        "--vllm-python", default=default_python(".venv-vllm"), help="Python with vLLM and lit-rlhf (ppo-vllm, async)"
    )
    parser.add_argument("--json", type=Path, help="also write every worker's result here")
    args = parser.parse_args()

    stages = [s for key in (STAGES if args.stage == "all" else [args.stage]) for s in STAGES[key]]
    versions = {}
    if any(s in ("sft", "rm4", "rm9", "grpo", "dpo") for s in stages):
        versions["trl"] = check_trl(args.trl_python, "trl.trainer.reward_trainer", INSTALL["trl"])
    if any(s in ("ppo", "ppo-vllm") for s in stages):
        versions["trl-ppo"] = check_trl(args.trl_ppo_python, "trl.experimental.ppo", INSTALL["trl-ppo"])
    if any(s in ("ppo-vllm", "async") for s in stages):
        versions["vllm"] = check_trl(args.vllm_python, "lit_rlhf.engines.vllm", INSTALL["vllm"], package="vllm")
    build_workspace(args.workspace)
    log = args.workspace / "workers.log"
    log.write_text("")

    results: dict[str, list[tuple[dict, dict]]] = {}
    loads: dict[str, list[float]] = {}
    for stage in stages:
        first, second = workers(stage, sys.executable, args.trl_python, args.trl_ppo_python, args.vllm_python)
        results[stage], loads[stage] = [], []
        for pair in range(args.pairs):
            loads[stage].append(os.getloadavg()[0])
            a = run_worker(first.python, first.script, stage, args.workspace, args.threads, log, extra=first.extra)
            b = run_worker(second.python, second.script, stage, args.workspace, args.threads, log, extra=second.extra)
            results[stage].append((a, b))
            rates = "  ".join(
                f"{name} {a[c] / a['seconds']:.2f} vs {b[c] / b['seconds']:.2f}" for name, c in RATES[stage]
            )
            print(f"[{stage} pair {pair + 1}/{args.pairs}, load {loads[stage][-1]:.1f}] {rates}", flush=True)

    every_load = [load for values in loads.values() for load in values]
    print(
        f"\nversions: {versions}; torch threads {args.threads}; {args.pairs} alternating pairs per stage; warm-up "
        f"excluded; 1-minute load average before the pairs {min(every_load):.1f}..{max(every_load):.1f} "
        f"({os.cpu_count()} CPUs).\n"
    )
    print_tables(results)
    if args.json:
        payload = {"versions": versions, "threads": args.threads, "loads": loads, "results": results}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
