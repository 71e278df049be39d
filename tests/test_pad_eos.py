"""Models whose pad token IS their EOS (SmolLM2, Llama-3, Qwen chat tokenizers; issue 16 part 3).

With pad == eos an id alone cannot tell a real EOS from padding, and the chat template puts EOS
inside every prompt (the end of each user turn). The tests prove that lit-rlhf decides by
position and attention mask, never by the id: SFT trains the response's final EOS, the RM reads
its score at the real last token (the EOS that ends the response, not padding after it and not an
EOS inside the prompt), and PPO's response mask ends at the first sampled EOS.
"""

from __future__ import annotations

import string

import lightning as L
import pytest
import torch
from conftest import write_jsonl

from lit_rlhf.algorithms.lm import IGNORE_INDEX
from lit_rlhf.data import PromptDataModule, RewardDataModule, SFTDataModule
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory

#: SmolLM2-style: every turn ends with the EOS token (its ``<|im_end|>``).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_eos_pad_tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {
        tok: i
        for i, tok in enumerate(specials + list(string.ascii_letters + string.digits + string.punctuation + " \n"))
    }
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<eos>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An SFT directory (tiny Llama, pad == eos tokenizer), an RM directory from it, and the tokenizer."""
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("pad_eos")
    tokenizer = load_tokenizer(str(build_eos_pad_tokenizer(root / "tokenizer")))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 0
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config.to_json_file(root / "config.json")
    torch.manual_seed(0)
    policy = load_causal_lm(str(root / "config.json"))
    with torch.no_grad():  # EOS likely at some positions and not others, so sampled responses end at different steps
        policy.lm_head.weight.mul_(0.1)
        policy.lm_head.weight[0] = torch.randn(32) * 1.5
    save_hf_directory(policy, tokenizer, root / "sft")
    save_hf_directory(load_scalar_model(str(root / "sft")), tokenizer, root / "rm")
    return {"root": root, "tokenizer": tokenizer, "sft": str(root / "sft"), "rm": str(root / "rm")}


def _rows(batch):
    """Per row: (ids, attention, labels or None) as lists."""
    labels = batch.get("labels")
    return [
        (
            batch["input_ids"][i].tolist(),
            batch["attention_mask"][i].tolist(),
            None if labels is None else labels[i].tolist(),
        )
        for i in range(len(batch["input_ids"]))
    ]


# ----------------------------------------------------------------------------------------------
# SFT


SFT_RECORDS = [
    {"prompt": "ab", "response": "cd"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"prompt": "a much longer prompt", "response": "and a longer answer"},
]


def test_sft_labels_the_final_eos_and_masks_only_padding(world, tmp_path):
    eos = world["tokenizer"].eos_token_id
    data = SFTDataModule(
        train=str(write_jsonl(tmp_path / "sft.jsonl", SFT_RECORDS)),
        tokenizer=str(world["root"] / "tokenizer"),
        batch_size=3,
        group_by_length=False,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert len(batch["input_ids"]) == 3
    for ids, attention, labels in _rows(batch):
        length = sum(attention)
        assert ids[length - 1] == eos and labels[length - 1] == eos  # the response's EOS is trained ...
        assert all(label == IGNORE_INDEX for label in labels[length:])  # ... padding (the same id) is not
        assert all(token == eos for token in ids[length:])
    # the chat row: the user turn's EOS is context (not trained); the assistant turn's EOS is trained
    chat_ids, chat_attention, chat_labels = next(
        r for r in _rows(batch) if r[0][0] == world["tokenizer"].convert_tokens_to_ids("<|user|>")
    )
    eos_positions = [i for i in range(sum(chat_attention)) if chat_ids[i] == eos]
    assert len(eos_positions) == 2
    assert chat_labels[eos_positions[0]] == IGNORE_INDEX and chat_labels[eos_positions[1]] == eos


def test_sft_training_teaches_the_model_to_stop(world, tmp_path):
    from lit_rlhf.modules import SFTModule
    from lit_rlhf.settings import OptimizerSettings

    tokenizer = world["tokenizer"]
    data = SFTDataModule(train=str(write_jsonl(tmp_path / "sft.jsonl", SFT_RECORDS * 4)), batch_size=4)
    module = SFTModule(model=world["sft"], optimizer=OptimizerSettings(learning_rate=1e-2, min_lr_ratio=1.0))

    def p_stop() -> float:
        ids = torch.tensor([tokenizer("ab")["input_ids"] + tokenizer("cd", add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return float(module.model(input_ids=ids).logits[0, -1].softmax(-1)[tokenizer.eos_token_id])

    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    module.configure_model()
    before = p_stop()
    trainer.fit(module, data)
    module.model.eval()
    # EOS after "ab" -> "cd" is learned (measured: 0.0002 -> 0.19); a masked EOS label would only lower it
    assert before < 0.01 and p_stop() > 0.1


# ----------------------------------------------------------------------------------------------
# Reward model


def test_reward_is_read_at_the_real_last_token_not_at_padding_or_a_prompt_eos(world, tmp_path):
    from lit_rlhf.modules import RewardModule

    records = [{"prompt": [{"role": "user", "content": "pick"}], "responses": ["a", "a much longer response", "bc"]}]
    data = RewardDataModule(
        train=str(write_jsonl(tmp_path / "rm.jsonl", records)), tokenizer=str(world["root"] / "tokenizer")
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = RewardModule(model=world["rm"])
    module.configure_model()
    module.eval()
    with torch.no_grad():
        padded = module(batch)
        alone = torch.cat(
            [
                module(
                    {
                        "input_ids": torch.tensor([ids[: sum(mask)]]),
                        "attention_mask": torch.ones(1, sum(mask), dtype=torch.long),
                    }
                )
                for ids, mask, _ in _rows(batch)
            ]
        )
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)  # padding (EOS ids) changes nothing
    # every row holds two EOS ids before its padding: the user turn's and the response's own
    eos = world["tokenizer"].eos_token_id
    for ids, mask, _ in _rows(batch):
        assert sum(token == eos for token in ids[: sum(mask)]) == 2 and ids[sum(mask) - 1] == eos
    # reading at a different position (e.g. the last non-EOS token, HF's pad-id pooling) gives other scores
    with torch.no_grad():
        before_eos = torch.cat(
            [
                module(
                    {
                        "input_ids": torch.tensor([ids[: sum(mask) - 1]]),
                        "attention_mask": torch.ones(1, sum(mask) - 1, dtype=torch.long),
                    }
                )
                for ids, mask, _ in _rows(batch)
            ]
        )
    assert not torch.allclose(padded, before_eos, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# PPO


def test_ppo_response_mask_ends_at_the_first_sampled_eos(world, tmp_path):
    from lit_rlhf.models.heads import sequence_rewards
    from lit_rlhf.modules import PPOModule

    eos = world["tokenizer"].eos_token_id
    prompts = [{"messages": [{"role": "user", "content": text}]} for text in ("sort b a", "hi", "count to three", "x")]
    data = PromptDataModule(
        prompts=str(write_jsonl(tmp_path / "p.jsonl", prompts)),
        val_prompts=str(tmp_path / "p.jsonl"),
        tokenizer=str(world["root"] / "tokenizer"),
        val_batch_size=4,
    )
    data.setup("fit")
    batch = next(iter(data.val_dataloader()[-1]))
    module = PPOModule(
        policy=world["sft"],
        reward_model=world["rm"],
        batch={"rollout_batch_size": 8, "samples_per_prompt": 2, "minibatch_size": 4, "micro_batch_size": 4},
        sampling={"max_new_tokens": 8},
        ema_decay=None,
        ptx={"gamma": 0.0},
        seed=3,
    )
    module.configure_model()
    rollout, _ = module.make_rollout(batch)

    responses, mask = rollout.responses.tolist(), rollout.response_mask.tolist()
    ends = []
    for row, row_mask, ended in zip(responses, mask, rollout.ended.tolist()):
        first = row.index(eos) if eos in row else None
        assert ended == (first is not None)
        expected = [True] * len(row) if first is None else [i <= first for i in range(len(row))]
        assert row_mask == expected  # through the first EOS; the EOS ids after it are padding
        ends.append(first)
    stopped = [e for e in ends if e is not None]
    assert stopped and max(stopped) > 0 and len(set(ends)) > 1, f"sampled ends {ends}: pick another seed"
    # the prompts' own EOS (end of the user turn) stays attended; left padding (EOS ids) does not
    prompt_ids, prompt_attention = rollout.prompts, rollout.attention_mask[:, : rollout.prompt_length]
    assert ((prompt_ids == eos) & (prompt_attention == 1)).sum(1).eq(1).all()
    assert (prompt_ids[prompt_attention == 0] == eos).all() and (prompt_attention == 0).any()
    # the reward is the RM's score at each episode's real last token: the same as scoring it unpadded
    reward_model = load_scalar_model(world["rm"], trainable=False)
    for i in range(len(rollout)):
        keep = rollout.attention_mask[i].bool()
        alone = sequence_rewards(
            reward_model, rollout.input_ids[i][keep][None], torch.ones(1, int(keep.sum()), dtype=torch.long)
        )
        torch.testing.assert_close(rollout.scores[i : i + 1], alone, rtol=1e-5, atol=1e-5)
