"""``lit-rlhf sandbox run``: the whole InstructGPT pipeline on the offline sandbox, then a report.

base (shipped) -> SFT -> sample K responses + gold-label them -> RM -> PPO and PPO-ptx -> report,
and DPO on the same comparisons beside them.

Every stage is the shipped config (``configs/*.yaml``) run through the same ``lit-rlhf fit`` a user
runs, with only output locations (and, with ``--fast``, sizes) overridden. The report compares the
gold score of the base, SFT and PPO policies, the RM's held-out accuracy, the final KL to SFT,
and the held-out pretraining loss with and without ptx; a PNG plots gold and RM score against KL,
all three measured on the same (exported, EMA) policy's samples every few rollouts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from lit_rlhf.sandbox.paths import BASE_MODEL_DIR, DATA_DIR

CSV = "lightning.pytorch.loggers.CSVLogger"
WANDB = "lightning.pytorch.loggers.WandbLogger"

#: Responses sampled per training prompt for the labeler to rank (the paper's K ranges 4 to 9). K = 9
#: gives C(9,2) = 36 pairs per prompt, all from one forward pass each in the RM (measured: held-out
#: accuracy ~0.80 with K = 9 on all 1000 prompts).
SAMPLES_PER_PROMPT = 9

#: --fast: a few steps of everything, for the test suite (minutes -> seconds; numbers meaningless).
FAST = {
    "sft": ["--trainer.max_steps", "6", "--trainer.limit_val_batches", "1"],
    "sample": {"limit": 24, "k": 4},
    "rm": ["--trainer.max_steps", "4", "--trainer.limit_val_batches", "1"],
    "ppo": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"],
    "dpo": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"],
    "eval_prompts": 16,
    "eval_texts": 16,
    "probe_prompts": 4,
}

#: The PPO probe (``gold_vs_kl.png``): every PROBE_EVERY rollouts (62 per run), PROBE_PROMPTS held-out
#: prompts x PROBE_SAMPLES_PER_PROMPT samples (~0.01 standard error on the mean gold score).
PROBE_EVERY = 6
PROBE_PROMPTS = 100
PROBE_SAMPLES_PER_PROMPT = 4


def _loggers(stage_dir: Path, name: str, wandb: bool) -> str:
    loggers = [{"class_path": CSV, "init_args": {"save_dir": str(stage_dir), "name": "csv", "version": ""}}]
    if wandb:
        loggers.append({"class_path": WANDB, "init_args": {"project": "lit-rlhf-sandbox", "name": name, "save_dir": str(stage_dir)}})
    return json.dumps(loggers)


def _checkpointing(stage_dir: Path, extra: Optional[list] = None) -> str:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(stage_dir / "checkpoints"), "save_last": True}}]
    return json.dumps(callbacks + (extra or []))


def fit(config: str, stage_dir: Path, name: str, overrides: list[str], *, wandb: bool, callbacks: Optional[list] = None) -> None:
    """One ``lit-rlhf fit`` in this process, its outputs under ``stage_dir``."""
    from lit_rlhf.cli import main

    started = time.perf_counter()
    main([
        "fit", "--config", config,
        "--trainer.logger", _loggers(stage_dir, name, wandb),
        "--trainer.callbacks", _checkpointing(stage_dir, callbacks),
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.output_dir", str(stage_dir / "model"),
        *overrides,
    ])
    print(f"[sandbox] {name}: {time.perf_counter() - started:.0f} s -> {stage_dir / 'model'}", flush=True)


def probe_callback(num_prompts: int, every_n_rollouts: int, samples_per_prompt: int = PROBE_SAMPLES_PER_PROMPT, history_file: Optional[Path] = None) -> dict:
    """The measurement during PPO: gold score, RM (proxy) score and KL to SFT of the exported (EMA) policy,
    all on the same held-out samples (at the report's temperature), every few rollouts and at the start."""
    from lit_rlhf.sandbox.report import MAX_NEW_TOKENS, SAMPLED_TEMPERATURE

    return {
        "class_path": "lit_rlhf.callbacks.gold_score.GoldProxyKLProbe",
        "init_args": {
            "prompts": str(DATA_DIR / "prompts_eval.jsonl"),
            "every_n_rollouts": every_n_rollouts,
            "num_prompts": num_prompts,
            "samples_per_prompt": samples_per_prompt,
            "max_new_tokens": MAX_NEW_TOKENS,
            "temperature": SAMPLED_TEMPERATURE,
            **({"history_file": str(history_file)} if history_file else {}),
        },
    }


def run(out: str = "runs", seed: int = 0, fast: bool = False, wandb: bool = True, configs: str = "configs") -> Path:
    """Run the whole pipeline on the sandbox and print the report.

    Args:
        out: Root directory of every stage's outputs (``<out>/sft/model``, ``<out>/rm/model``, ...).
        seed: Seed of every stage (the sandbox world itself is fixed by the shipped data).
        fast: A few steps of everything (for tests); the numbers are then meaningless.
        wandb: Also log each stage to Weights & Biases (offline unless WANDB_MODE=online).
        configs: Directory holding sft.yaml, rm.yaml, ppo.yaml and dpo.yaml.
    """
    from lit_rlhf.sampling import sample_responses
    from lit_rlhf.sandbox.labeling import label_samples
    from lit_rlhf.sandbox.report import write_report

    root = Path(out)
    size = FAST if fast else {}
    started = time.perf_counter()
    # Data order and PPO sampling follow seed_everything (their own `seed` arguments default to it).
    seed_args = ["--seed_everything", str(seed)]
    eval_prompts, eval_texts = size.get("eval_prompts", 200), size.get("eval_texts", 400)

    fit(f"{configs}/sft.yaml", root / "sft", "sft", seed_args + size.get("sft", []), wandb=wandb)

    sample = size.get("sample", {})
    samples = sample_responses(
        model=str(root / "sft/model"), prompts=str(DATA_DIR / "prompts_train.jsonl"), out=str(root / "comparisons/samples.jsonl"),
        k=sample.get("k", SAMPLES_PER_PROMPT), limit=sample.get("limit", None), max_new_tokens=24, temperature=1.0, seed=seed,
    )
    label_samples(str(samples), str(root / "comparisons"), seed=seed)

    rm_data = ["--data.init_args.train", str(root / "comparisons/train.jsonl"), "--data.init_args.val", str(root / "comparisons/val.jsonl")]
    fit(f"{configs}/rm.yaml", root / "rm", "rm", seed_args + ["--model.init_args.model", str(root / "sft/model")] + rm_data + size.get("rm", []), wandb=wandb)

    ppo_models = ["--model.init_args.policy", str(root / "sft/model"), "--model.init_args.reward_model", str(root / "rm/model")]
    for name, extra in (("ppo_ptx", []), ("ppo", ["--model.init_args.gamma_ptx", "0"])):
        probe = probe_callback(size.get("probe_prompts", PROBE_PROMPTS), PROBE_EVERY)
        fit(f"{configs}/ppo.yaml", root / name, name, seed_args + ppo_models + extra + size.get("ppo", []), wandb=wandb, callbacks=[probe])

    # DPO learns from the same comparisons directly (no RM, no sampling); the probe measures its gold score and
    # KL to SFT at the start and the end, on the same samples as PPO's.
    probe = probe_callback(size.get("probe_prompts", PROBE_PROMPTS), every_n_rollouts=10**9)
    fit(f"{configs}/dpo.yaml", root / "dpo", "dpo", seed_args + ["--model.init_args.policy", str(root / "sft/model")] + rm_data
        + size.get("dpo", []), wandb=wandb, callbacks=[probe])

    report = write_report(root, base_model=str(BASE_MODEL_DIR), num_prompts=eval_prompts, num_texts=eval_texts)
    print(f"[sandbox] whole pipeline: {time.perf_counter() - started:.0f} s; report: {report}")
    return report
