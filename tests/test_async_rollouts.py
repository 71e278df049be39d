"""Asynchronous rollouts (``batch.max_staleness``): 0 is today's synchronous loop bit for bit; 1 samples each rollout
one policy version behind with the HF worker engine, and a run interrupted with a batch sampled ahead resumes to
the uninterrupted run's weights.

12 prompts, 4 per rollout: an epoch is 3 rollouts (the first of each is sampled synchronously), 2 optimizer steps
each.
"""

from __future__ import annotations

import hashlib
import platform

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from ppo_support import one_cpu_thread, ppo_world, tiny_data, tiny_module, tiny_trainer  # noqa: F401

from lit_rlhf.data.prompts import LookaheadItems, RolloutSampler, collate_prompts_ahead
from lit_rlhf.engines import HFEngine
from lit_rlhf.engines.async_rollouts import AsyncRollouts, as_behaviour, staleness_metrics, with_policy_version
from lit_rlhf.engines.hf_worker import HFWorkerEngine
from lit_rlhf.episodes import Episodes, RolloutSummary, concat_responses
from lit_rlhf.errors import ConfigError

STEPS_PER_ROLLOUT = 2
#: sha256 of the policy and value weights after 4 rollouts of the tiny fit, from the commit before asynchronous
#: rollouts existed (cef16be), on the platform named: max_staleness 0 must reproduce it bit for bit.
SYNC_DIGEST = ("4d106d0857a59cb6e76f8de051a62c4bb2b3b0898b99e0505f5ff3841872be4b", "2.13.0+cpu", "x86_64")
ASYNC = dict(batch={"max_staleness": 1}, correction={"truncated_is_cap": 2.0})


def weights_digest(module) -> str:
    digest = hashlib.sha256()
    for model in (module.policy, module.value_model):
        for key, value in model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


class VersionRecorder(Callback):
    """Per rollout: the versions of the policy that sampled its episodes, the version it updated, the logged
    staleness, and its prompts."""

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        summary = RolloutSummary.from_outputs(outputs)
        self.rows[summary.index] = {
            "versions": summary.episodes.policy_versions.tolist(),
            "updated": summary.index - 1,  # rollouts done before this one's update
            "staleness": float(trainer.callback_metrics["rollout/staleness"]),
            "staleness_max": float(trainer.callback_metrics["rollout/staleness_max"]),
            "prompts": summary.episodes.prompts.tolist(),
            "score": float(trainer.callback_metrics["rollout/score"]),
        }


def run(world, root, rollouts: int, ckpt_path=None, **settings):
    recorder = VersionRecorder()
    module = tiny_module(world, engine=HFWorkerEngine(), **settings)
    checkpoints = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=STEPS_PER_ROLLOUT)
    trainer = tiny_trainer(
        root,
        max_steps=rollouts * STEPS_PER_ROLLOUT,
        max_epochs=10,
        enable_checkpointing=True,
        callbacks=[checkpoints, recorder],
    )
    try:
        trainer.fit(module, tiny_data(world, module), ckpt_path=ckpt_path)
    finally:
        module.engine.close()
    return module, recorder.rows


def test_max_staleness_zero_reproduces_the_synchronous_fit(ppo_world, tmp_path):
    expected, torch_version, machine = SYNC_DIGEST
    if (torch.__version__, platform.machine()) != (torch_version, machine):
        pytest.skip(f"the saved digest is of torch {torch_version} on {machine}")
    module = tiny_module(ppo_world, batch={"max_staleness": 0})
    tiny_trainer(tmp_path, max_steps=8, max_epochs=3).fit(module, tiny_data(ppo_world, module))
    assert weights_digest(module) == expected


@pytest.fixture(scope="module")
def straight(ppo_world, tmp_path_factory):
    return run(ppo_world, tmp_path_factory.mktemp("straight"), rollouts=5, **ASYNC)


def test_each_update_uses_episodes_at_most_one_version_old(straight):
    module, rows = straight
    assert sorted(rows) == [1, 2, 3, 4, 5]
    staleness = []
    for index, row in rows.items():
        versions = set(row["versions"])
        assert len(versions) == 1, f"rollout {index} mixes policy versions {versions}"
        staleness.append(row["updated"] - versions.pop())
        assert row["staleness"] == row["staleness_max"] == staleness[-1]
    # The first rollout of each epoch (1 and 4) is sampled synchronously; the others one version behind.
    assert staleness == [0, 1, 1, 0, 1]
    assert module.policy.training is not None and module.rollouts_done == 5


@pytest.mark.slow
@pytest.mark.parametrize("interrupt_after", [2, 3], ids=["batch-in-flight", "epoch-boundary"])
def test_resume_with_a_batch_sampled_ahead_repeats_the_uninterrupted_run(
    ppo_world, tmp_path, straight, interrupt_after
):
    full_module, full_rows = straight
    run(ppo_world, tmp_path, rollouts=interrupt_after, **ASYNC)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["ppo"]["rollout_ahead"]
    assert ("ready" in saved) == (interrupt_after == 2)  # mid-epoch: the next batch was sampled ahead and saved
    module, rows = run(ppo_world, tmp_path, rollouts=5, ckpt_path=str(tmp_path / "last.ckpt"), **ASYNC)

    assert sorted(rows) == list(range(interrupt_after + 1, 6))
    for index, row in rows.items():
        assert row == full_rows[index], f"rollout {index} differs after resume"
    for name in ("policy", "value_model", "ema"):
        for (key, a), b in zip(
            getattr(module, name).state_dict().items(), getattr(full_module, name).state_dict().values()
        ):
            assert torch.equal(a, b), f"{name}.{key} differs after resume"


def test_asynchronous_rollouts_refuse_an_engine_without_weights_of_its_own_and_a_missing_cap(ppo_world):
    with pytest.raises(ConfigError, match="HFWorkerEngine or VLLMEngine.*HFEngine"):
        tiny_module(ppo_world, engine=HFEngine(), **ASYNC)
    with pytest.raises(ConfigError, match="batch.max_staleness=1 .* set correction.truncated_is_cap"):
        tiny_module(ppo_world, engine=HFWorkerEngine(), batch={"max_staleness": 1})
    with pytest.raises(ConfigError, match="batch.max_staleness"):
        tiny_module(ppo_world, batch={"max_staleness": 2})


def test_lookahead_sampler_pairs_each_slot_with_the_next_batch_of_its_epoch():
    plain = RolloutSampler(6, 2, seed=3)
    ahead = RolloutSampler(6, 2, seed=3, lookahead=True)
    order = list(plain)
    assert list(ahead) == [(order[0], order[2]), (order[1], order[3]), (order[2], order[4]), (order[3], order[5])] + [
        (order[4], None),
        (order[5], None),
    ]
    items = LookaheadItems([([i + 1], {"i": i}) for i in range(6)])
    batch = collate_prompts_ahead([items[pair] for pair in list(ahead)[:2]], pad_id=0)
    assert batch["input_ids"].flatten().tolist() == [order[0] + 1, order[1] + 1]
    assert batch["next"]["input_ids"].flatten().tolist() == [order[2] + 1, order[3] + 1]
    assert "next" not in collate_prompts_ahead([items[pair] for pair in list(ahead)[4:]], pad_id=0)


def test_stale_episodes_keep_their_sampler_logprobs_as_behaviour_and_their_versions():
    ids = torch.tensor([[5, 6, 7], [5, 8, 1]])
    episodes = Episodes(
        ids, torch.ones_like(ids), torch.ones(2, 1, dtype=torch.bool), torch.ones(2, dtype=torch.bool), 2
    )
    sampled = with_policy_version(episodes.with_values(logprobs=torch.tensor([[-0.5], [-1.5]])), 3)
    stale = as_behaviour(sampled)
    assert stale.logprobs is None and torch.equal(stale.engine_logprobs, torch.tensor([[-0.5], [-1.5]]))
    metrics = staleness_metrics(stale.with_values(policy_versions=torch.tensor([3, 2])), 4)
    assert (float(metrics["rollout/staleness"]), float(metrics["rollout/staleness_max"])) == (1.5, 2.0)


def test_a_batch_sampled_ahead_is_used_only_for_its_own_prompts():
    """An epoch cut short (``limit_train_batches``) never reaches the batch it looked ahead to: the next epoch's first
    rollout is sampled in its step instead of taking it."""
    ahead = AsyncRollouts(HFWorkerEngine())  # the worker is never started: the sampler below stands in for it
    ahead.synced = True

    def sampler(prompts, rollout_index):
        ids = prompts["input_ids"]  # one "response" per prompt: its rollout index
        return lambda: concat_responses(ids, torch.ones_like(ids), torch.full((len(ids), 1), rollout_index), 1)

    first, second = {"input_ids": torch.tensor([[4, 5]])}, {"input_ids": torch.tensor([[6, 7]])}
    ahead.submit(sampler(first, 1), version=0, policy=None)
    assert ahead.take(second, samples_per_prompt=1) is None  # sampled for other prompts: dropped
    episodes, seconds = ahead.step({**second, "next": first}, 1, version=3, sampler=sampler, policy=None)
    assert episodes.responses.tolist() == [[3]] and episodes.policy_versions.tolist() == [3] and seconds >= 0
    episodes, _ = ahead.step(first, 1, version=4, sampler=sampler, policy=None)  # the batch sampled ahead
    assert episodes.responses.tolist() == [[4]] and episodes.policy_versions.tolist() == [3]
    assert ahead.take(first, samples_per_prompt=1) is None  # nothing more ahead: no "next"
    ahead.close()
