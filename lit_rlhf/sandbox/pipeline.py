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

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from lit_rlhf.recipes.stages import StageCost, fit
from lit_rlhf.sandbox.paths import BASE_MODEL_DIR, DATA_DIR
from lit_rlhf.sandbox.report import MAX_NEW_TOKENS, POLICY_LABELS
from lit_rlhf.sandbox.report import SAMPLES_PER_PROMPT as EVAL_SAMPLES_PER_PROMPT

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


def probe_callback(
    num_prompts: int,
    every_n_rollouts: int,
    samples_per_prompt: int = PROBE_SAMPLES_PER_PROMPT,
    history_file: Optional[Path] = None,
) -> dict:
    """The measurement during PPO: gold score, RM (proxy) score and KL to SFT of the exported (EMA) policy,
    all on the same held-out samples (at the report's temperature), every few rollouts and at the start."""
    from lit_rlhf.sandbox.report import MAX_NEW_TOKENS, SAMPLED_TEMPERATURE

    return {
        "class_path": "lit_rlhf.sandbox.callbacks.GoldProxyKLProbe",
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


#: The pipeline's stages after the reward model, in order; ``stages`` picks a subset.
TRAINED_POLICIES = ("ppo_ptx", "ppo", "dpo")


def run(
    out: str = "runs",
    seed: int = 0,
    fast: bool = False,
    wandb: bool = True,
    configs: str = "configs",
    base_model: str = str(BASE_MODEL_DIR),
    stages: Sequence[str] = TRAINED_POLICIES,
    samples_per_prompt: int = SAMPLES_PER_PROMPT,
    sample_prompts: Optional[int] = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    eval_prompts: int = 200,
    eval_samples_per_prompt: int = EVAL_SAMPLES_PER_PROMPT,
    eval_texts: int = 400,
    probe_prompts: int = PROBE_PROMPTS,
    probe_every: int = PROBE_EVERY,
) -> Path:
    """Run the whole pipeline on the sandbox and print the report.

    Args:
        out: Root directory of every stage's outputs (``<out>/sft/model``, ``<out>/rm/model``, ...).
        seed: Seed of every stage (the sandbox world itself is fixed by the shipped data).
        fast: A few steps of everything (for tests); the numbers are then meaningless.
        wandb: Also log each stage to Weights & Biases (offline unless WANDB_MODE=online).
        configs: Directory holding sft.yaml, rm.yaml and ppo.yaml (and dpo.yaml when ``stages`` has dpo);
            ``configs/recipes/smollm2-135m`` runs the pipeline on a real pretrained model.
        base_model: The model SFT starts from (any model source), also evaluated as the report's base row.
        stages: Policies trained after the reward model: ppo_ptx (the config's ptx.gamma), ppo (ptx.gamma 0), dpo.
        samples_per_prompt: Responses sampled from the SFT policy per prompt for the labeler to rank (K).
        sample_prompts: Label only the first this many training prompts (unset: all 1000).
        max_new_tokens: Longest sampled response, in tokens, when sampling comparisons and evaluating.
        eval_prompts: Held-out prompts of the report's gold evaluation.
        eval_samples_per_prompt: Samples per held-out prompt in the report's sampled (T=1) gold score.
        eval_texts: Held-out pretraining lines of the report's language-modelling loss.
        probe_prompts: Held-out prompts of the gold/proxy/KL probe during PPO.
        probe_every: Rollouts between two probe measurements.
    """
    from lit_rlhf.errors import ConfigError, check_option
    from lit_rlhf.sampling import sample_responses
    from lit_rlhf.sandbox.labeling import label_samples
    from lit_rlhf.sandbox.report import write_report

    unknown = [stage for stage in stages if stage not in TRAINED_POLICIES]
    if unknown or len(set(stages)) != len(stages):
        raise ConfigError(f"--stages: each of {', '.join(TRAINED_POLICIES)} at most once, got {stages}")
    check_option("samples_per_prompt", samples_per_prompt, min=2, integer=True)  # fewer than 2 make no comparison
    for name, value in (
        ("sample_prompts", sample_prompts),
        ("max_new_tokens", max_new_tokens),
        ("eval_prompts", eval_prompts),
        ("eval_samples_per_prompt", eval_samples_per_prompt),
        ("eval_texts", eval_texts),
        ("probe_prompts", probe_prompts),
        ("probe_every", probe_every),
    ):
        check_option(name, value, min=1, integer=True)
    root = Path(out)
    size = FAST if fast else {}
    started = time.perf_counter()
    costs: dict[str, StageCost] = {}
    # Data order and PPO sampling follow seed_everything (their own `seed` arguments default to it).
    seed_args = ["--seed_everything", str(seed)]
    probe_prompts = size.get("probe_prompts", probe_prompts)

    costs["SFT"] = fit(
        f"{configs}/sft.yaml",
        root / "sft",
        "sft",
        seed_args + ["--model.init_args.model", base_model] + size.get("sft", []),
        wandb=wandb,
    )

    sample = size.get("sample", {})
    sampling_started = time.perf_counter()
    samples = sample_responses(
        model=str(root / "sft/model"),
        prompts=str(DATA_DIR / "prompts_train.jsonl"),
        out=str(root / "comparisons/samples.jsonl"),
        k=sample.get("k", samples_per_prompt),
        limit=sample.get("limit", sample_prompts),
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        seed=seed,
    )
    label_samples(str(samples), str(root / "comparisons"), seed=seed)
    costs["sample K + gold labels"] = StageCost(wall_s=time.perf_counter() - sampling_started, peak_rss_gib=None)

    rm_data = [
        "--data.init_args.train",
        str(root / "comparisons/train.jsonl"),
        "--data.init_args.val",
        str(root / "comparisons/val.jsonl"),
    ]
    costs["RM"] = fit(
        f"{configs}/rm.yaml",
        root / "rm",
        "rm",
        seed_args + ["--model.init_args.model", str(root / "sft/model")] + rm_data + size.get("rm", []),
        wandb=wandb,
    )

    ppo_models = [
        "--model.init_args.policy",
        str(root / "sft/model"),
        "--model.init_args.reward_model",
        str(root / "rm/model"),
    ]
    for name in [stage for stage in stages if stage != "dpo"]:
        extra = ["--model.init_args.ptx.gamma", "0"] if name == "ppo" else []
        probe = probe_callback(probe_prompts, probe_every)
        costs[POLICY_LABELS[name]] = fit(
            f"{configs}/ppo.yaml",
            root / name,
            name,
            seed_args + ppo_models + extra + size.get("ppo", []),
            wandb=wandb,
            callbacks=[probe],
        )

    if "dpo" in stages:
        # DPO learns from the same comparisons directly (no RM, no sampling); the probe measures its gold score and
        # KL to SFT at the start and the end, on the same samples as PPO's.
        probe = probe_callback(probe_prompts, every_n_rollouts=10**9)
        costs["DPO"] = fit(
            f"{configs}/dpo.yaml",
            root / "dpo",
            "dpo",
            seed_args + ["--model.init_args.policy", str(root / "sft/model")] + rm_data + size.get("dpo", []),
            wandb=wandb,
            callbacks=[probe],
        )

    report = write_report(
        root,
        base_model=base_model,
        num_prompts=size.get("eval_prompts", eval_prompts),
        num_texts=size.get("eval_texts", eval_texts),
        samples_per_prompt=eval_samples_per_prompt,
        max_new_tokens=max_new_tokens,
        costs={name: asdict(cost) for name, cost in costs.items()},
    )
    print(f"[sandbox] whole pipeline: {time.perf_counter() - started:.0f} s; report: {report}")
    return report
