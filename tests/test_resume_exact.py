"""Exact resume of SFT and RM: a run interrupted mid-epoch and resumed from ``last.ckpt`` ends with the
same weights (bitwise), the same per-step losses and the same reward bias as the uninterrupted run.

The SFT model has residual dropout, so the dropout RNG must resume too, not only the batch order.
18 training records, batch 3: an epoch is 6 steps, 2 epochs; a checkpoint every 2 steps; the run is
interrupted (an exception, like a kill) right after the checkpoint of step 4 (mid-epoch) or step 6
(the last batch of the epoch, before that epoch's validation, which the resumed run must then run).
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import write_jsonl, write_tiny_config
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rlhf.resume import PendingValidation

STEPS_PER_EPOCH = 6


class Interrupted(Exception):
    """Stands in for a kill: the run stops between two steps, after a checkpoint was written."""


class Recorder(Callback):
    """Every training loss and validation loss, by global step; raises at ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.rows: dict[tuple[str, int], float] = {}
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.stop_at:
            raise Interrupted()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows[("train", trainer.global_step)] = float(outputs["loss"])

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.rows[("val", trainer.global_step)] = float(trainer.callback_metrics["val/loss"])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("resume")
    write_tiny_config(root / "gpt2.json", len(AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")), model_type="gpt2")
    rng = random.Random(0)
    demos = [{"prompt": f"q{i} " + "x" * rng.randint(1, 12), "response": "a" * rng.randint(1, 15)} for i in range(24)]
    comparisons = [
        {"prompt": f"p{i}", "responses": ["good" + "g" * rng.randint(0, 5), "bad" + "b" * rng.randint(0, 9), "meh"]}
        for i in range(24)
    ]
    write_jsonl(root / "sft.jsonl", demos)
    write_jsonl(root / "rm.jsonl", comparisons)
    return {"root": root, "config": str(root / "gpt2.json"), "tokenizer": str(tiny_dir / "tokenizer")}


def run(world, stage: str, out_dir, *, stop_at: int | None = None, ckpt_path: str | None = None):
    from lit_rlhf.data import RewardDataModule, SFTDataModule
    from lit_rlhf.modules import RewardModule, SFTModule
    from lit_rlhf.settings import OptimizerSettings

    seed_everything(0)
    root = world["root"]
    if stage == "sft":
        module = SFTModule(
            model=world["config"],
            tokenizer=world["tokenizer"],
            dropout=0.2,
            optimizer=OptimizerSettings(learning_rate=1e-3),
        )
        data = SFTDataModule(train=str(root / "sft.jsonl"), val_fraction=0.25, batch_size=3, max_length=64)
    else:
        module = RewardModule(
            model=world["config"], tokenizer=world["tokenizer"], optimizer=OptimizerSettings(learning_rate=1e-3)
        )
        data = RewardDataModule(
            train=str(root / "rm.jsonl"),
            val_fraction=0.25,
            batch_size=3,
            max_length=64,
            center_on=str(root / "sft.jsonl"),
        )
    recorder = Recorder(stop_at)
    trainer = Trainer(
        default_root_dir=out_dir,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            ModelCheckpoint(dirpath=out_dir, save_last=True, every_n_train_steps=2),
            PendingValidation(),
            recorder,
        ],
    )
    try:
        trainer.fit(module, data, ckpt_path=ckpt_path)
    except Interrupted:
        pass
    return module, recorder.rows


@pytest.fixture(scope="module")
def straight_runs(world, tmp_path_factory):
    return {stage: run(world, stage, tmp_path_factory.mktemp(f"{stage}-straight")) for stage in ("sft", "rm")}


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_mid_epoch_resume_is_bit_exact(world, straight_runs, tmp_path, stage):
    full_module, full_rows = straight_runs[stage]
    run(world, stage, tmp_path, stop_at=4)
    module, rows = run(world, stage, tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))

    assert min(step for _, step in rows) == 5, "the resumed run must continue after step 4, not restart the epoch"
    assert {key: value for key, value in full_rows.items() if key[1] > 4} == rows  # every loss, bitwise
    for (name, a), b in zip(module.model.state_dict().items(), full_module.model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    if stage == "rm":
        assert module.model.config.reward_bias == full_module.model.config.reward_bias


def test_resume_at_the_epoch_boundary_runs_the_missed_validation(world, straight_runs, tmp_path):
    full_module, full_rows = straight_runs["sft"]
    run(world, "sft", tmp_path, stop_at=STEPS_PER_EPOCH)  # killed after the epoch's last step, before its validation
    module, rows = run(world, "sft", tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))
    assert {
        key: value
        for key, value in full_rows.items()
        if key[1] >= STEPS_PER_EPOCH and key != ("train", STEPS_PER_EPOCH)
    } == rows
    for a, b in zip(module.model.state_dict().values(), full_module.model.state_dict().values()):
        assert torch.equal(a, b)
