"""Shared fixtures: a tiny character-level tokenizer and tiny random models, built offline."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer(out_dir: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A character-level tokenizer: every character one token, so tests can count positions by hand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_tiny_config(path: Path, vocab_size: int, *, model_type: str = "llama") -> Path:
    from transformers import GPT2Config, LlamaConfig

    if model_type == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=None,
            tie_word_embeddings=True,
        )
    else:
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=256,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=1,
        )
    config.to_json_file(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A directory with ``tokenizer/`` and ``config.json`` (random-init tiny Llama)."""
    root = tmp_path_factory.mktemp("tiny")
    build_char_tokenizer(root / "tokenizer")
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(root / "tokenizer"))
    write_tiny_config(root / "config.json", vocab_size)
    write_tiny_config(root / "gpt2.json", vocab_size, model_type="gpt2")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from lit_rlhf.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_dir / "tokenizer"))


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


@pytest.fixture
def in_scratch_dir(tmp_path, monkeypatch):
    """Run from a scratch directory that sees the repo's relative paths (configs/, lit_rlhf/), as a
    user in a clone does, while every output (runs/, wandb/) lands in the scratch directory."""
    for name in ("configs", "lit_rlhf"):
        os.symlink(REPO_ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def finish_wandb_runs():
    """Close any wandb run a test's logger left open: a run still open in this process would make the
    next WandbLogger attach to it instead of starting its own offline run."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
