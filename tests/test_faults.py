"""Fault injection: ``lit-rlhf fit`` runs of SFT, RM and PPO are SIGKILLed at chosen and random moments
(between steps, inside a checkpoint save, inside the Hugging Face export), resumed with ``--ckpt_path last``,
and must end exactly like an uninterrupted run: bitwise equal exported weights and equal per-step metrics.
A kill inside the export must leave the previous export intact and never a half-written directory.

Slow (real processes, about 20 runs): ``python -m pytest -m slow tests/test_faults.py`` (``.ci/run`` runs it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SANDBOX = REPO_ROOT / "lit_rlhf/sandbox/assets"
TINY_MODEL = ["--model.init_args.model", str(SANDBOX / "base_config.json"), "--model.init_args.tokenizer", str(SANDBOX / "tokenizer")]
STAGES = {
    # 20 demonstrations, batch 4: 5 steps an epoch, 2 epochs, validation after each epoch.
    "sft": ["--config", "configs/sft.yaml", *TINY_MODEL, "--data.init_args.train", "sft.jsonl", "--data.init_args.val", "sft_val.jsonl",
            "--data.init_args.batch_size", "4", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "2"],
    # 20 comparisons, batch 4: 5 steps, then centering on 8 demonstrations.
    "rm": ["--config", "configs/rm.yaml", *TINY_MODEL, "--data.init_args.train", "rm.jsonl", "--data.init_args.val", "rm_val.jsonl",
           "--data.init_args.center_on", "sft_val.jsonl", "--data.init_args.batch_size", "4"],
    # 3 rollouts of 4 episodes, 2 optimizer steps each, with ptx.
    "ppo": ["--config", "configs/ppo.yaml", "--model.init_args.policy", str(SANDBOX / "base_model"),
            "--model.init_args.reward_model", str(SANDBOX / "base_model"), "--model.init_args.batch.rollout_batch_size", "4",
            "--model.init_args.batch.minibatch_size", "2", "--model.init_args.batch.micro_batch_size", "2", "--model.init_args.sampling.max_new_tokens", "6",
            "--model.init_args.ptx.micro_batch_size", "4", "--data.init_args.ptx_ratio", "1", "--data.init_args.val_text", "null",
            "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0"],
}
RUN_TIMEOUT_S = 400


def write_data(root: Path) -> None:
    demos = [json.loads(line) for line in (SANDBOX / "data/sft_train.jsonl").read_text().splitlines()[:28]]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demos[:20]))
    (root / "sft_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demos[20:28]))
    rng = random.Random(0)
    for name, n in (("rm.jsonl", 20), ("rm_val.jsonl", 6)):
        rows = [{"prompt": d["prompt"], "responses": [d["response"], d["response"][::-1] + " x", "no idea" + "!" * rng.randint(1, 3)]}
                for d in (demos * 2)[:n]]
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def workdir(tmp: Path) -> Path:
    for name in ("configs", "lit_rlhf"):
        os.symlink(REPO_ROOT / name, tmp / name)
    write_data(tmp)
    return tmp


def fit(root: Path, stage: str, *, at_step: int = -1, during: str = "step", ckpt_path: str | None = None,
        kill_after_s: float | None = None) -> int:
    """One ``lit-rlhf fit`` process in ``root``; returns its exit code (-9 when SIGKILLed)."""
    fault = {
        "trainer": {
            "logger": False, "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": f"runs/{stage}/checkpoints", "save_last": True, "every_n_train_steps": 1}},
                {"class_path": "fault_support.KillAndRecord",
                 "init_args": {"record": str(root / f"{stage}_steps.jsonl"), "at_step": at_step, "during": during}},
            ],
        }
    }
    (root / "fault.yaml").write_text(json.dumps(fault))
    args = [sys.executable, "-m", "lit_rlhf.cli", "fit", *STAGES[stage], "--config", "fault.yaml"]
    if ckpt_path:
        args += ["--ckpt_path", ckpt_path]
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT / 'tests'}{os.pathsep}{REPO_ROOT}", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    with open(root / f"{stage}.log", "ab") as log:
        process = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        if kill_after_s is not None:
            try:
                return process.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        return process.wait(timeout=RUN_TIMEOUT_S)


def final_steps(root: Path, stage: str) -> dict[int, dict]:
    """The metrics of every step; a step the killed run made and the resumed one redid counts as redone."""
    rows = {}
    for line in (root / f"{stage}_steps.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


def exported_weights(root: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(root / "runs" / stage / "model" / "model.safetensors")


def assert_same_run(root: Path, reference: Path, stage: str) -> None:
    expected, got = final_steps(reference, stage), final_steps(root, stage)
    assert got == expected, f"{stage}: per-step metrics differ after resume"
    a, b = exported_weights(root, stage), exported_weights(reference, stage)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"{stage}: {len(got)} steps compared, largest exported-weight difference {worst}")  # shown with -s
    assert worst == 0.0, f"{stage}: exported weights differ by up to {worst}"
    if stage == "rm":
        config = json.loads((root / "runs/rm/model/config.json").read_text())
        assert config["reward_bias"] == json.loads((reference / "runs/rm/model/config.json").read_text())["reward_bias"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs of every stage, and how long each took."""
    root = workdir(tmp_path_factory.mktemp("straight"))
    durations = {}
    for stage in STAGES:
        started = time.monotonic()
        assert fit(root, stage) == 0, (root / f"{stage}.log").read_text()[-3000:]
        durations[stage] = time.monotonic() - started
    return root, durations


@pytest.mark.parametrize("stage, at_step, during", [
    ("sft", 3, "step"),           # mid-epoch
    ("sft", 5, "checkpoint"),     # inside the save after the epoch's last step, before its validation
    ("sft", 5, "validation"),     # in the epoch's validation, after the last step's checkpoint: resume must validate
    ("rm", 3, "checkpoint"),      # inside a checkpoint save mid-epoch
    ("ppo", 4, "step"),           # between two rollouts
    ("ppo", 2, "checkpoint"),     # inside the save after the first rollout
], ids=["sft-mid-epoch", "sft-in-checkpoint-at-epoch-end", "sft-in-epoch-end-validation", "rm-in-checkpoint", "ppo-between-rollouts", "ppo-in-checkpoint"])
def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(straight, tmp_path, stage, at_step, during):
    reference, _ = straight
    root = workdir(tmp_path)
    assert fit(root, stage, at_step=at_step, during=during) == -signal.SIGKILL
    assert fit(root, stage, ckpt_path="last") == 0, (root / f"{stage}.log").read_text()[-3000:]
    assert_same_run(root, reference, stage)


def test_kill_inside_the_export_keeps_the_previous_model_and_resume_writes_the_new_one(straight, tmp_path):
    reference, _ = straight
    root = workdir(tmp_path)
    previous = root / "runs/sft/model"
    shutil.copytree(SANDBOX / "base_model", previous)  # the model an earlier run exported
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    assert fit(root, "sft", at_step=0, during="export") == -signal.SIGKILL  # dies inside save_pretrained
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before, "the previous export was touched"
    from lit_rlhf.models.loading import load_causal_lm

    load_causal_lm(str(previous), trainable=False)  # still a whole model

    assert fit(root, "sft", ckpt_path="last") == 0, (root / "sft.log").read_text()[-3000:]
    assert_same_run(root, reference, "sft")
    assert (previous / "lit_rlhf_export.json").is_file()
    assert not [p for p in previous.parent.iterdir() if p.name.startswith(".model.")], "a temporary export was left behind"


@pytest.mark.parametrize("stage, seed", [("sft", 1), ("rm", 2), ("ppo", 3)])
def test_killed_at_a_random_moment_and_resumed_ends_like_the_uninterrupted_run(straight, tmp_path, stage, seed):
    reference, durations = straight
    root = workdir(tmp_path)
    # Somewhere after the first third of the run: inside a step, a checkpoint write, validation or the export.
    delay = random.Random(seed).uniform(0.3, 0.8) * durations[stage]
    code = fit(root, stage, kill_after_s=delay)
    if code != 0:
        assert code == -signal.SIGKILL
        assert fit(root, stage, ckpt_path="last") == 0, (root / f"{stage}.log").read_text()[-3000:]
    assert_same_run(root, reference, stage)
