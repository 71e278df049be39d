"""What every ``compare.py`` worker shares: the step clock, phase timers, peak memory and the result line (and,
for the other benchmarks, :func:`write_random_sft_and_rm`).

A worker is one process that trains one stage with one framework and prints, as its last stdout
line, ``RESULT {json}``. Counting starts after the warm-up steps: ``seconds`` is the wall time from
the end of the last warm-up step to the end of the last measured step (data loading, logging and
everything else a user waits for included), and the work counters cover exactly those steps.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

RESULT_PREFIX = "RESULT "
#: How to get each TRL reference: a venv over this environment (same torch and transformers), nothing else changed.
INSTALL = {
    "trl": 'python -m venv --system-site-packages .venv-trl && .venv-trl/bin/pip install "trl==1.16.0"',
    "trl-ppo": 'python -m venv --system-site-packages .venv-trl-ppo && .venv-trl-ppo/bin/pip install "trl==1.12.0"',
    "vllm": "the vllm environment of docs/engines.md (Installing), as .venv-vllm in the repository root",
}


def configure_process(threads: int) -> None:
    """Same threads and offline settings in every worker, whatever the framework."""
    import torch

    torch.set_num_threads(threads)
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("WANDB_MODE", "disabled"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("TRL_EXPERIMENTAL_SILENCE", "1"),
    ):
        os.environ.setdefault(key, value)


class StepClock:
    """Timestamps at the end of each optimizer step (or PPO rollout); per-step work counters beside them."""

    def __init__(self, warmup_steps: int):
        if warmup_steps < 1:
            raise ValueError("warmup_steps must be >= 1: the first step's end is where measuring starts")
        self.warmup_steps = warmup_steps
        self.ends: list[float] = []
        self.work: list[dict[str, float]] = []

    def step_end(self, **work: float) -> None:
        self.ends.append(time.perf_counter())
        self.work.append(work)

    @property
    def steps(self) -> int:
        return len(self.ends)

    def measured(self) -> dict[str, float]:
        """``seconds`` and the summed counters over the steps after the warm-up."""
        if len(self.ends) <= self.warmup_steps:
            raise RuntimeError(f"only {len(self.ends)} steps ran, fewer than warm-up {self.warmup_steps} + 1")
        totals: dict[str, float] = {
            "measured_steps": len(self.ends) - self.warmup_steps,
            "seconds": self.ends[-1] - self.ends[self.warmup_steps - 1],
        }
        for work in self.work[self.warmup_steps :]:
            for key, value in work.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return totals


class PhaseTimer:
    """Wraps methods of objects (an instance attribute shadows the method; behaviour unchanged) and sums the
    seconds spent in each, per rollout: :meth:`take` returns ``{<name>_seconds: ...}`` and starts over."""

    def __init__(self, **targets: tuple[object, str]):
        self.seconds = dict.fromkeys(targets, 0.0)
        for name, (owner, method) in targets.items():
            setattr(owner, method, self.timed(name, getattr(owner, method)))

    def timed(self, name: str, function):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return call

    def take(self) -> dict[str, float]:
        taken = {f"{name}_seconds": value for name, value in self.seconds.items()}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return taken


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def emit_result(result: dict) -> None:
    result = {**result, "peak_rss_gib": peak_rss_gib()}
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def write_random_sft_and_rm(root, model_config: dict, tokenizer_dir: str) -> dict[str, str]:
    """A randomly initialised causal LM (seed 0) from ``model_config`` saved as ``root/sft``, and the scalar model
    built from it as ``root/rm``, both with the tokenizer of ``tokenizer_dir``: the two inputs of a PPO run."""
    from pathlib import Path

    import torch

    from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
    from lit_rlhf.models.saving import save_hf_directory

    root = Path(root)
    tokenizer = load_tokenizer(tokenizer_dir)
    (root / "config.json").write_text(json.dumps(model_config))
    torch.manual_seed(0)
    policy = load_causal_lm(str(root / "config.json"))
    print(f"model: {sum(p.numel() for p in policy.parameters()) / 1e6:.0f}M parameters")
    save_hf_directory(policy, tokenizer, root / "sft")
    save_hf_directory(load_scalar_model(str(root / "sft")), tokenizer, root / "rm")
    return {"sft": str(root / "sft"), "rm": str(root / "rm")}
