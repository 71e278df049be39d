"""Clean stops and resumes that apply what changed: a guard (NaN, KL bound) exits non-zero with one line and
exports nothing; a resumed run takes a changed learning rate or KL coefficient; PPO resumes from any
checkpoint path, not only `last`."""

from __future__ import annotations

import pytest
import torch
from ppo_support import one_cpu_thread, ppo_world, tiny_data, tiny_module, tiny_trainer  # noqa: F401

from lit_rlhf.episodes import Episodes
from lit_rlhf.reliability.guards import TrainingStopped


def checkpoint_after_two_steps(world, tmp_path, **overrides):
    module = tiny_module(world, **overrides)
    trainer = tiny_trainer(tmp_path / "first", max_steps=2)
    trainer.fit(module, tiny_data(world, module))
    path = tmp_path / "two_steps.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_resume_applies_a_changed_learning_rate_and_kl_coef(ppo_world, tmp_path):
    path = checkpoint_after_two_steps(ppo_world, tmp_path, learning_rate=3e-3, kl_coef=0.02)
    module = tiny_module(ppo_world, learning_rate=1e-5, kl_coef=0.5)
    trainer = tiny_trainer(
        tmp_path / "resumed", max_steps=4, max_epochs=5
    )  # the first fit ended its epoch at max_steps
    trainer.fit(module, tiny_data(ppo_world, module), ckpt_path=str(path))
    policy_group = trainer.optimizers[0].param_groups[0]
    assert policy_group["initial_lr"] == pytest.approx(1e-5)
    assert policy_group["lr"] <= 1e-5 * (1 + 1e-9)  # warm-up multiplier applied to the new peak, not the old 3e-3
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs[0] == pytest.approx(1e-5)
    assert module.kl_controller.beta == pytest.approx(0.5)


def test_resume_keeps_the_checkpoint_values_when_nothing_changed(ppo_world, tmp_path):
    path = checkpoint_after_two_steps(ppo_world, tmp_path, learning_rate=3e-3)
    trainer = tiny_trainer(
        tmp_path / "resumed", max_steps=4, max_epochs=5
    )  # the first fit ended its epoch at max_steps
    module = tiny_module(ppo_world, learning_rate=3e-3)
    trainer.fit(module, tiny_data(ppo_world, module), ckpt_path=str(path))
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(3e-3)


def test_nan_guard_stops_without_exporting_over_a_good_model(ppo_world, tmp_path):
    class NaNAfterFirstRollout(type(tiny_module(ppo_world))):
        def score_responses(self, rollout: Episodes) -> torch.Tensor:
            scores = super().score_responses(rollout)
            return scores * float("nan") if self.rollouts_done >= 1 else scores

    good = tmp_path / "model"
    good.mkdir()
    (good / "marker").write_text("a good model")
    module = tiny_module(ppo_world, cls=NaNAfterFirstRollout, output_dir=str(good))
    with pytest.raises(
        TrainingStopped, match=r"the reward is NaN or inf at rollout 1 \(global step 2\).*lower optimizer.learning_rate"
    ):
        tiny_trainer(tmp_path, max_steps=6).fit(module, tiny_data(ppo_world, module))
    assert [p.name for p in good.iterdir()] == ["marker"]


def ppo_cli_args(world, *extra):
    overrides = {
        "policy": world["sft"],
        "reward_model": world["rm"],
        "batch.rollout_batch_size": 4,
        "batch.minibatch_size": 2,
        "batch.micro_batch_size": 2,
        "sampling.max_new_tokens": 6,
        "ptx.micro_batch_size": 8,
    }
    args = [
        "fit",
        "--config",
        "configs/ppo.yaml",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--data.init_args.prompts",
        world["prompts.jsonl"],
    ]
    return args + [f"--model.init_args.{k}={v}" for k, v in overrides.items()] + list(extra)


def test_ppo_resumes_from_an_explicit_checkpoint_path(in_scratch_dir, ppo_world):
    from lit_rlhf.cli import main

    main(ppo_cli_args(ppo_world, "--trainer.max_steps", "4"))
    last = in_scratch_dir / "runs/ppo/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    main(ppo_cli_args(ppo_world, "--trainer.max_steps", "6", "--ckpt_path", str(last)))  # used to fail merging 'seed'
    assert torch.load(last, weights_only=False)["global_step"] == 6


def test_kl_guard_exits_non_zero_with_one_line_and_no_export(in_scratch_dir, ppo_world, capsys):
    from lit_rlhf.cli import main

    guard = in_scratch_dir / "guard.yaml"
    guard.write_text(
        "trainer:\n  callbacks:\n    - class_path: lit_rlhf.callbacks.KLTracker\n"
        "      init_args: {max_kl: -1.0, stop_on_exceed: true}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(ppo_cli_args(ppo_world, "--config", str(guard), "--trainer.max_steps", "6"))
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lit-rlhf: stopped: KL to the reference is") and "stopped without exporting" in err[-1]
    assert not (in_scratch_dir / "runs/ppo/model").exists()
    assert list(in_scratch_dir.rglob("kl_exceeded.ckpt"))  # the diverged state, kept for inspection
