"""A step's gradient does not depend on how its batch is split: the loss math of every aggregation mode,
and PPO (policy, value and ptx terms) with micro-batches of 1 against one micro-batch of the whole minibatch."""

from __future__ import annotations

import pytest
import torch
from ppo_support import (  # noqa: F401  (pytest fixtures, used by name)
    FIXED_RESPONSES,
    GradientRecorder,
    fixed_rollout_module,
    one_cpu_thread,
    ppo_world,
    tiny_data,
    tiny_trainer,
)

from lit_rlhf.algorithms import aggregate_loss, step_normalizer

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [5.0, 6.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]).bool()


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token_mean", 21.0 / 6),  # every token weighs the same
        ("sequence_mean", (2.0 + 4.0 + 5.5) / 3),  # each sequence's mean, then the mean of those
        ("constant", 21.0 / (3 * 4)),  # Dr. GRPO: sequences x max length
    ],
)
def test_each_mode_is_exact_over_any_split(mode, expected):
    whole = aggregate_loss(PER_TOKEN, MASK, mode, step_normalizer(MASK, mode, max_length=4))
    assert whole.item() == pytest.approx(expected)
    for split in ([1, 1, 1], [2, 1], [1, 2]):
        rows = torch.arange(3).split(split)
        normalizer = sum(step_normalizer(MASK[r], mode, max_length=4) for r in rows)
        parts = sum(aggregate_loss(PER_TOKEN[r], MASK[r], mode, normalizer) for r in rows)
        assert parts.item() == pytest.approx(expected), split
    # The bug this replaces: a mean per micro-batch, weighted by rows, is not the token mean.
    if mode == "token_mean":
        naive = sum(len(r) / 3 * (PER_TOKEN[r][MASK[r]].mean()) for r in torch.arange(3).split([1, 2]))
        assert naive.item() != pytest.approx(expected)


def first_step_gradients(world, tmp_path, **overrides) -> dict[str, torch.Tensor]:
    module = fixed_rollout_module(world, **overrides)
    recorder = GradientRecorder()
    tiny_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(module, tiny_data(world, module, ptx_ratio=0.5))
    return recorder.steps[0]


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "constant"])
def test_ppo_gradient_is_the_same_for_any_micro_batch_size(ppo_world, tmp_path, mode):
    lengths = (FIXED_RESPONSES == 1).int().argmax(1) + 1
    assert len(set(lengths.tolist())) > 2  # responses of different lengths: where the old weighting went wrong
    whole = first_step_gradients(
        ppo_world, tmp_path / "whole", loss_aggregation=mode, micro_batch_size=8, ptx_micro_batch_size=4
    )
    split = first_step_gradients(
        ppo_world, tmp_path / "split", loss_aggregation=mode, micro_batch_size=1, ptx_micro_batch_size=1
    )
    assert whole.keys() == split.keys() and any(k.startswith("value_model.") for k in whole)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)
