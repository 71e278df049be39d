"""Every numeric setting of the stage modules is checked when the module is built — before any model loads or
any step runs — with one line that names the option and its allowed range."""

from __future__ import annotations

import dataclasses

import pytest
from ppo_support import ppo_world, tiny_module  # noqa: F401

from lit_rlhf.errors import ConfigError
from lit_rlhf.modules import DPOModule, RewardModule, SFTModule
from lit_rlhf.settings import OptimizerSettings

PPO_CASES = [
    ({"micro_batch_size": 0}, "batch.micro_batch_size must be >= 1, got 0"),
    ({"minibatch_size": -2}, "batch.minibatch_size must be >= 1, got -2"),
    ({"max_new_tokens": 0}, "sampling.max_new_tokens must be >= 1, got 0"),
    ({"ppo_epochs": 0}, "batch.ppo_epochs must be >= 1, got 0"),
    ({"ema_decay": 1.5}, r"ema_decay must be in \[0, 1\), got 1.5"),
    ({"clip_range": -0.2}, r"loss.clip_range must be > 0, got -0.2"),
    ({"temperature": -1.0}, "sampling.temperature must be >= 0, got -1"),
    ({"kl_coef": -1.0}, "kl.coef must be >= 0, got -1"),
    ({"learning_rate": -1.0}, "optimizer.learning_rate must be > 0, got -1"),
    ({"top_p": 0.0}, r"sampling.top_p must be in \(0, 1\], got 0"),
    ({"lam": 1.5}, r"advantage.lam must be in \[0, 1\], got 1.5"),
    ({"gamma_ptx": -1.0}, "ptx.gamma must be >= 0, got -1"),
    ({"warmup_start": 1.5}, r"optimizer.warmup_start must be in \[0, 1\], got 1.5"),
    (
        {"rollout_batch_size": 6, "minibatch_size": 4},
        "batch.rollout_batch_size must be a multiple of batch.minibatch_size",
    ),
    ({"kl": {"coef": 0.1, "typo": 1}}, "typo: unknown option of KLSettings"),
]


@pytest.mark.parametrize("overrides, message", PPO_CASES, ids=[next(iter(c[0])) for c in PPO_CASES])
def test_ppo_options_are_checked_at_construction(ppo_world, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_module(ppo_world, **overrides)


@pytest.mark.parametrize("cls, argument", [(SFTModule, "model"), (RewardModule, "model"), (DPOModule, "policy")])
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": 0.0}, "optimizer.learning_rate must be > 0, got 0"),
        ({"min_lr_ratio": 1.5}, r"optimizer.min_lr_ratio must be in \[0, 1\], got 1.5"),
        ({"warmup_steps": -1}, "optimizer.warmup_steps must be >= 0, got -1"),
        ({"betas": (0.9, 1.0)}, r"optimizer.betas\[1\] must be in \[0, 1\), got 1"),
        ({"weight_decay": -0.1}, "optimizer.weight_decay must be >= 0, got -0.1"),
        ({"learning_rat": 1.0}, "learning_rat: unknown option of OptimizerSettings"),
    ],
)
def test_sft_rm_dpo_optimizer_options_are_checked(ppo_world, cls, argument, overrides, message):
    with pytest.raises(ConfigError, match=message):
        cls(**{argument: ppo_world["sft"]}, optimizer=overrides)


@pytest.mark.parametrize(
    "cls, argument, default_lr",
    [(SFTModule, "model", 9.65e-6), (RewardModule, "model", 9e-6), (DPOModule, "policy", 5e-7)],
)
def test_optimizer_group_defaults_per_stage_and_plain_dict_hparams(ppo_world, cls, argument, default_lr):
    """Each stage keeps its paper default; a partial group fills the rest from OptimizerSettings; the module reads
    the typed group and stores it as a plain dict (checkpoints load with weights_only)."""
    assert cls(**{argument: ppo_world["sft"]}).optimizer == OptimizerSettings(learning_rate=default_lr)
    module = cls(**{argument: ppo_world["sft"]}, optimizer={"learning_rate": 1e-3, "betas": [0.8, 0.9]})
    assert module.optimizer == OptimizerSettings(learning_rate=1e-3, betas=(0.8, 0.9))
    assert module.hparams.optimizer == dataclasses.asdict(module.optimizer) and isinstance(
        module.hparams.optimizer, dict
    )
    assert "learning_rate" not in module.hparams


def test_dpo_beta_and_sft_dropout_ranges(ppo_world):
    with pytest.raises(ConfigError, match="beta must be > 0, got 0"):
        DPOModule(policy=ppo_world["sft"], beta=0.0)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        DPOModule(policy=ppo_world["sft"], label_smoothing=0.5)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1"):
        SFTModule(model=ppo_world["sft"], dropout=1.0)
