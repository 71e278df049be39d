"""Exact resume: a PPO run interrupted and resumed from its last checkpoint repeats the uninterrupted run.

12 prompts, 4 per rollout: an epoch is 3 rollouts, each rollout 2 optimizer steps. The straight run
makes 5 rollouts (crossing an epoch boundary); the interrupted runs stop after 2 (mid-epoch) or 3
(at the epoch boundary) and resume to 5. Metrics, prompts, weights, KL controller and LR must match.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from ppo_support import one_cpu_thread, ppo_world, tiny_data, tiny_module, tiny_trainer  # noqa: F401

from lit_rlhf.episodes import RolloutSummary

STEPS_PER_ROLLOUT = 2
COMPARED = (
    "rollout/score",
    "rollout/kl",
    "rollout/beta",
    "rollout/entropy",
    "train/policy_loss",
    "train/value_loss",
    "train/approx_kl",
    "train/grad_norm",
    "train/lr",
)


class Recorder(Callback):
    """Per rollout: the logged metrics and the prompts it used."""

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = {k: float(trainer.callback_metrics[k]) for k in COMPARED}
        summary = RolloutSummary.from_outputs(outputs)
        metrics["ptx/loss"] = float(summary.stats["ptx/loss"])
        metrics["prompts"] = summary.episodes.prompts.tolist()
        self.rows[summary.index] = metrics


def run(world, root, rollouts: int, ckpt_path=None):
    recorder = Recorder()
    module = tiny_module(world, target_kl=0.5, kl_horizon=100)  # adaptive beta: its state must resume too
    checkpoints = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=STEPS_PER_ROLLOUT)
    trainer = tiny_trainer(
        root,
        max_steps=rollouts * STEPS_PER_ROLLOUT,
        max_epochs=10,
        enable_checkpointing=True,
        callbacks=[checkpoints, recorder],
    )
    trainer.fit(module, tiny_data(world, module), ckpt_path=ckpt_path)
    return module, trainer, recorder.rows


@pytest.fixture(scope="module")
def straight(ppo_world, tmp_path_factory):
    return run(ppo_world, tmp_path_factory.mktemp("straight"), rollouts=5)


@pytest.mark.parametrize("interrupt_after", [2, 3], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_run_repeats_the_uninterrupted_run(ppo_world, tmp_path, straight, interrupt_after):
    full_module, full_trainer, full_rows = straight
    run(ppo_world, tmp_path, rollouts=interrupt_after)
    module, trainer, rows = run(ppo_world, tmp_path, rollouts=5, ckpt_path=str(tmp_path / "last.ckpt"))

    assert sorted(rows) == list(range(interrupt_after + 1, 6))  # it continued, not restarted
    assert trainer.global_step == full_trainer.global_step == 5 * STEPS_PER_ROLLOUT
    for rollout, metrics in rows.items():
        expected = full_rows[rollout]
        assert metrics["prompts"] == expected["prompts"], f"rollout {rollout} drew other prompts"
        for key, value in metrics.items():
            if key != "prompts":
                assert value == pytest.approx(expected[key], rel=1e-5, abs=1e-7), f"rollout {rollout}: {key}"
    for name in ("policy", "value_model", "ema"):
        for (key, a), b in zip(
            getattr(module, name).state_dict().items(), getattr(full_module, name).state_dict().values()
        ):
            assert torch.allclose(a, b, atol=1e-6), f"{name}.{key} differs after resume"
    assert module.kl_controller.beta == pytest.approx(full_module.kl_controller.beta)
    # The data module's checkpoint state holds the position (epoch, rollouts consumed): the one place a resume reads.
    position = torch.load(tmp_path / "last.ckpt", weights_only=False)["PromptDataModule"]["data_position"]["prompts"]
    assert (position["epoch"], position["batches"]) == (1, 2)
