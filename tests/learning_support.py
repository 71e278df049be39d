"""Shared pieces of the learning tests (tests/test_learning.py): a small SFT policy trained on the sandbox, each
objective's fit from it through its shipped config, and the two measurements the tests compare (the gold score of
sampled responses, and held-out preference accuracy of a policy's implicit DPO reward).

Every stage runs through ``lit-rlhf fit`` (in this process) from a directory that sees the repository's
``configs/`` and ``lit_rlhf/``, the way a user in a clone runs them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from conftest import REPO_ROOT

EVAL_PROMPTS = "lit_rlhf/sandbox/assets/data/prompts_eval.jsonl"
TRAIN_PROMPTS = "lit_rlhf/sandbox/assets/data/prompts_train.jsonl"


def scratch_root(tmp: Path) -> Path:
    """``tmp`` with links to the repository's ``configs/`` and ``lit_rlhf/``: relative config paths resolve there."""
    for name in ("configs", "lit_rlhf"):
        if not (tmp / name).exists():
            os.symlink(REPO_ROOT / name, tmp / name)
    return tmp


def option_args(options: dict) -> list[str]:
    """``{"learning_rate": 1e-3}`` -> ``["--model.init_args.learning_rate", "0.001"]`` (nested keys take dots)."""
    args = []
    for key, value in options.items():
        args += [f"--model.init_args.{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


def fit(root: Path, config: str, out: str, seed: int, *args: str, extra_config: str | None = None) -> Path:
    """One ``lit-rlhf fit --config configs/<config>`` in ``root`` (cwd), with no logger, checkpoint or validation;
    returns the exported model directory."""
    from lit_rlhf.cli import main

    cwd = os.getcwd()
    os.chdir(root)
    try:
        configs = ["--config", f"configs/{config}"] + (["--config", extra_config] if extra_config else [])
        main(
            [
                "fit",
                *configs,
                "--seed_everything",
                str(seed),
                "--trainer.logger",
                "false",
                "--trainer.callbacks",
                "null",
                "--trainer.enable_checkpointing",
                "false",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
                "--trainer.limit_val_batches",
                "0",
                "--model.init_args.output_dir",
                str(root / out),
                *args,
            ]
        )
    finally:
        os.chdir(cwd)
    return root / out


def gold_score(model_dir: Path, num_prompts: int, samples_per_prompt: int, seed: int = 1234) -> float:
    """Mean gold score of ``samples_per_prompt`` samples (T=1, the policy as RL trains it; 24 new tokens as in the
    rollouts) on each of the first ``num_prompts`` held-out prompts; the sampler's seed is fixed."""
    from lit_rlhf.models import load_causal_lm, load_tokenizer
    from lit_rlhf.sandbox.callbacks import GoldScoreEvaluation

    model = load_causal_lm(str(model_dir), trainable=False)
    tokenizer = load_tokenizer(str(model_dir), padding_side="left")
    evaluation = GoldScoreEvaluation(
        prompts=str(REPO_ROOT / EVAL_PROMPTS),
        num_prompts=num_prompts,
        max_new_tokens=24,
        temperature=1.0,
        samples_per_prompt=samples_per_prompt,
        seed=seed,
    )
    sums = evaluation.evaluate(model, tokenizer)
    return float(sums["gold/score"] / sums["gold/score/count"])


def labeled_comparisons(model_dir: Path, prompts: str, out_dir: Path, *, limit: int, k: int, seed: int) -> Path:
    """``k`` samples of the model on the first ``limit`` prompts, ranked by the gold labeler into
    ``out_dir/train.jsonl`` and ``out_dir/val.jsonl`` (the pipeline's sampling and labeling, as a user runs them)."""
    from lit_rlhf.sampling import sample_responses
    from lit_rlhf.sandbox.labeling import label_samples

    samples = sample_responses(
        model=str(model_dir),
        prompts=str(REPO_ROOT / prompts),
        out=str(out_dir / "samples.jsonl"),
        k=k,
        limit=limit,
        max_new_tokens=24,
        temperature=1.0,
        seed=seed,
    )
    label_samples(str(samples), str(out_dir), seed=seed)
    return out_dir


@torch.no_grad()
def preference_accuracy(policy_dir: Path, reference_dir: Path, comparisons: list[str]) -> tuple[float, int]:
    """The fraction of comparison pairs whose implicit DPO reward ``log pi(y|x) - log ref(y|x)`` ranks the labeler's
    preferred response above the other (a tie counts one half: the reference itself scores exactly 0.5), and the
    number of pairs."""
    from lit_rlhf.data.comparisons import RewardDataModule
    from lit_rlhf.models import load_causal_lm
    from lit_rlhf.modules.dpo import sequence_logprobs

    policy = load_causal_lm(str(policy_dir), trainable=False)
    reference = load_causal_lm(str(reference_dir), trainable=False)
    hits, pairs = 0.0, 0
    for path in comparisons:
        data = RewardDataModule(val=path, tokenizer=str(reference_dir), max_length=128, batch_size=16)
        data.setup("validate")
        for batch in data.val_dataloader():
            implicit = sequence_logprobs(policy, batch) - sequence_logprobs(reference, batch)
            margin = implicit[batch["pairs"].winner] - implicit[batch["pairs"].loser]
            hits += float((margin > 0).sum() + 0.5 * (margin == 0).sum())
            pairs += len(margin)
    return hits / pairs, pairs
