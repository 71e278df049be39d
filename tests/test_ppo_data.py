"""PromptDataModule and RolloutSampler: whole rollouts per epoch, rank slices, cycling ptx, exact resume
positions, left padding, the truncation policy and bad records."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import write_jsonl
from lightning.pytorch.utilities import CombinedLoader
from ppo_support import one_cpu_thread  # noqa: F401

from lit_rlhf.data import PromptDataModule, RecordError
from lit_rlhf.data.prompts import RolloutSampler
from lit_rlhf.errors import ConfigError


def batches(sampler: RolloutSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_prompt_epochs_hold_whole_rollouts_in_a_seeded_order():
    sampler = RolloutSampler(10, 3, seed=1)
    first, again, second = batches(sampler, 0), batches(sampler, 0), batches(sampler, 1)
    assert len(first) == 3 and all(len(b) == 3 for b in first) and len(sampler) == 9  # tail of 1 dropped
    assert first == again and first != second
    assert len({i for b in first for i in b}) == 9  # no repeats within an epoch


def test_ranks_take_disjoint_slices_of_each_global_batch():
    ranks = [RolloutSampler(16, 2, num_replicas=2, rank=r, seed=0) for r in range(2)]
    per_rank = [batches(s, 0) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == 4
    seen = [i for rank in per_rank for b in rank for i in b]
    assert sorted(seen) == list(range(16))


def test_ptx_stream_cycles_and_never_ends_an_epoch_early():
    sampler = RolloutSampler(5, 4, seed=0, batches_per_epoch=3)  # 12 indices an epoch from 5 examples
    epoch0, epoch1 = batches(sampler, 0), batches(sampler, 1)
    assert len(epoch0) == len(epoch1) == 3 and len(sampler) == 12
    stream = [i for b in epoch0 + epoch1 for i in b]
    for start in range(0, 20, 5):  # each pass over the data is a permutation
        assert sorted(stream[start : start + 5]) == list(range(5))


def test_resume_skips_the_consumed_rollouts_of_its_epoch_only():
    sampler = RolloutSampler(12, 2, seed=0)
    full = batches(sampler, 1)
    sampler.resume = (1, 2)
    assert batches(sampler, 1) == full[2:]
    assert batches(sampler, 1) == full  # applied once
    sampler.resume = (0, 6)  # a checkpoint at the end of epoch 0: epoch 1 starts at its top
    assert batches(sampler, 1) == full


def attach(data: PromptDataModule, tokenizer) -> None:
    """A Trainer stand-in: one device, a module with the tokenizer (the batch sizes are the data module's own)."""
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(tokenizer=tokenizer), world_size=1, global_rank=0)


def test_batches_pair_left_padded_prompts_with_their_ptx_sequences(tmp_path, tiny_tokenizer):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "ab"}, {"prompt": "abcd"}] * 4 + [{"messages": [{"role": "user", "content": "hi"}]}] * 2,
    )
    (tmp_path / "t.txt").write_text("some text\nmore text here\n")
    data = PromptDataModule(
        prompts, ptx_text=str(tmp_path / "t.txt"), ptx_ratio=2, rollout_batch_size=4, samples_per_prompt=2
    )
    attach(data, tiny_tokenizer)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, CombinedLoader) and loader._mode == "min_size"
    loader.flattened[0].sampler.set_epoch(0)
    loader.flattened[1].sampler.set_epoch(0)
    all_batches = list(iter(loader))
    assert len(all_batches) == 5  # 10 prompts / 2 per rollout; the 2-line ptx file cycles to keep up
    batch = all_batches[0][0]
    ids, mask = batch["prompts"]["input_ids"], batch["prompts"]["attention_mask"]
    assert ids.shape[0] == 2 and bool(mask[:, -1].all())  # left-padded: every prompt ends in the last column
    assert batch["ptx"]["input_ids"].shape[0] == 8  # ptx_ratio x episodes per rollout
    rendered = [
        tiny_tokenizer.decode(row[m.bool()])
        for b in all_batches
        for row, m in zip(b[0]["prompts"]["input_ids"], b[0]["prompts"]["attention_mask"])
    ]
    assert "<|user|>hi\n<|assistant|>" in rendered  # messages go through the chat template with its generation prompt


def test_resume_position_comes_from_the_data_modules_own_state(tmp_path, tiny_tokenizer):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(8)])
    data = PromptDataModule(prompts, rollout_batch_size=2)
    attach(data, tiny_tokenizer)
    data.load_state_dict(
        {"data_position": {"prompts": {"epoch": 0, "batches": 3, "num_items": 8, "batch_size": 2, "num_replicas": 1}}}
    )
    data.setup("fit")
    loader = data.train_dataloader()
    assert "ptx" not in loader.iterables  # no ptx data: plain PPO batches
    assert len(list(iter(loader))) == 1  # 4 rollouts an epoch, 3 already consumed


@pytest.mark.parametrize("truncation", ["left", "drop", "error"])
def test_long_prompt_policy(tmp_path, tiny_tokenizer, truncation):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abcdefgh"}, {"prompt": "ab"}])
    data = PromptDataModule(prompts, max_prompt_length=4, truncation=truncation, rollout_batch_size=1)
    attach(data, tiny_tokenizer)
    if truncation == "error":
        with pytest.raises(RecordError, match=r"p.jsonl: record 1: prompt is 8 tokens long"):
            data.setup("fit")
        return
    data.setup("fit")
    kept = [tiny_tokenizer.decode(ids) for ids, _ in data.train_prompts]
    assert kept == (["efgh", "ab"] if truncation == "left" else ["ab"])


def test_bad_records_and_too_few_prompts(tmp_path, tiny_tokenizer):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "no prompt field"}])
    data = PromptDataModule(bad, rollout_batch_size=1)
    attach(data, tiny_tokenizer)
    with pytest.raises(RecordError, match=r"bad.jsonl: record 2: field 'prompt': missing"):
        data.setup("fit")
    few = write_jsonl(tmp_path / "few.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    data = PromptDataModule(few, rollout_batch_size=4)
    attach(data, tiny_tokenizer)
    data.setup("fit")
    with pytest.raises(ConfigError, match="cannot fill one rollout"):
        data.train_dataloader()
    data = PromptDataModule(few)  # no batch sizes: the CLI links them, Python code passes them
    attach(data, tiny_tokenizer)
    data.setup("fit")
    with pytest.raises(ConfigError, match="needs rollout_batch_size"):
        data.train_dataloader()
