"""SFT, RM and DPO under automatic optimization: one optimizer step's gradient is the same whether its
examples come as one batch or as micro-batches accumulated into the step (records of different lengths,
groups of different sizes). The rank half of the same promise is tested in test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from conftest import write_jsonl
from lightning.pytorch import Trainer
from test_reward import encode
from torch.utils.data import DataLoader

from lit_rlhf.data.batching import collate_examples
from lit_rlhf.data.comparisons import collate_groups
from lit_rlhf.data.tokenize import encode_prompt_response
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory
from lit_rlhf.modules import DPOModule, RewardModule, SFTModule
from lit_rlhf.settings import OptimizerSettings

SFT_PAIRS = [("q:", "a"), ("question two:", "a much longer answer"), ("x:", "yz"), ("long prompt here:", "mid answer")]
RANKED = [
    {"prompt": "A:", "responses": ["w", "xx", "yyyyy", "z"]},  # K=4: 6 pairs
    {"prompt": "B:", "chosen": "good and long", "rejected": "bad"},  # 1 pair
    {"prompt": "C:", "responses": ["p", "qq", "rrr"], "ranks": [0, 1, 1]},  # a tie: 2 pairs
    {"prompt": "D:", "responses": list("abcde"), "ranks": [0, 1, 2, 3, 4]},  # 10 pairs
]


def recording(cls):
    class Recording(cls):
        """Records the gradients the optimizer is about to use (after the step's normalisation)."""

        def on_before_optimizer_step(self, optimizer) -> None:
            super().on_before_optimizer_step(optimizer)
            self.step_grads = {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None}

    return Recording


def step_gradients(module, batches: list, accumulate: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return module.step_grads


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    save_hf_directory(load_causal_lm(str(tiny_dir / "config.json")), load_tokenizer(str(tiny_dir / "tokenizer")), out)
    return out


def assert_same(split: dict, whole: dict) -> None:
    assert whole and split.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sft_step_is_a_token_mean_over_the_whole_step(sft_dir, tiny_tokenizer):
    examples = [encode_prompt_response(tiny_tokenizer, p, r) for p, r in SFT_PAIRS]
    pad = tiny_tokenizer.pad_token_id
    make = lambda: recording(SFTModule)(model=str(sft_dir), optimizer=OptimizerSettings(learning_rate=1e-3))  # noqa: E731
    whole = step_gradients(make(), [collate_examples(examples, pad)], accumulate=1)
    split = step_gradients(make(), [collate_examples([e], pad) for e in examples], accumulate=4)
    assert_same(split, whole)


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_rm_and_dpo_steps_are_means_over_the_whole_step(stage, sft_dir, tiny_tokenizer, tmp_path):
    groups, _ = encode(write_jsonl(tmp_path / "c.jsonl", RANKED), tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    if stage == "rm":
        make = lambda: recording(RewardModule)(model=str(sft_dir), optimizer=OptimizerSettings(learning_rate=1e-3))  # noqa: E731
    else:
        make = lambda: recording(DPOModule)(policy=str(sft_dir), optimizer=OptimizerSettings(learning_rate=1e-3))  # noqa: E731
    whole = step_gradients(make(), [collate_groups(groups, pad)], accumulate=1)
    split = step_gradients(make(), [collate_groups([g], pad) for g in groups], accumulate=4)
    assert_same(split, whole)
