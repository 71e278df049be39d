"""The shared workload of ``compare.py``: one tokenizer, model initialisations, data files and settings.

Both frameworks read everything from this directory, so they train the same weights on the same
records with the same sizes:

- ``tokenizer/``: a word-level tokenizer over ``vocab_size`` synthetic words (``<pad>`` 0, ``<eos>`` 1);
- ``policy/``: a random-init Llama causal LM (SFT start, PPO policy and reference);
- ``reward/``: a random-init Llama with a scalar head (RM start, PPO reward and value models);
- ``data/sft.jsonl`` (prompt, response), ``data/rm_k{K}.jsonl`` (prompt, responses best..worst),
  ``data/rm_k{K}_pairs.jsonl`` (prompt, chosen, rejected: every pair of the same groups) and
  ``data/prompts.jsonl`` (prompt);
- ``data/dpo_pairs.jsonl`` (prompt, chosen, rejected): the DPO preference pairs, read as they are by both
  frameworks;
- ``settings.json``: the model config and each stage's sizes and step counts.

GRPO's reward is :func:`keyword_share`, a deterministic function of the response text that both frameworks
call (lit-rlhf through ``FunctionReward`` with :func:`keyword_reward`, TRL as a reward function).

The vocabulary is 8192 words by default so the output layer costs what it costs in real models
(vocab / hidden = 32 here; SmolLM-135M has 85, Llama-3-8B 32). Lengths are drawn from a wide
distribution, as real prompts and responses are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MODEL = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)

SETTINGS = {
    # batch_size sequences per optimizer step; tokens/s counts non-pad tokens
    "sft": {
        "records": 512,
        "batch_size": 8,
        "max_length": 320,
        "warmup_steps": 3,
        "measured_steps": 15,
        "learning_rate": 1e-5,
    },
    # prompts_per_step whole prompts (K-wise) = prompts_per_step * C(K, 2) pairs (pairwise) per optimizer step
    "rm": {
        "groups": 64,
        "ks": [4, 9],
        "prompts_per_step": {"4": 4, "9": 2},
        "max_length": 192,
        "warmup_steps": 2,
        "measured_steps": {"4": 10, "9": 5},
        "learning_rate": 1e-5,
    },
    # one rollout of rollout_batch_size prompts, split into minibatches (optimizer steps) of micro-batches
    "ppo": {
        "prompts": 256,
        "rollout_batch_size": 16,
        "minibatch_size": 8,
        "micro_batch_size": 8,
        "ppo_epochs": 1,
        "max_prompt_length": 64,
        "max_new_tokens": 64,
        "temperature": 1.0,
        "kl_coef": 0.05,
        "warmup_rollouts": 1,
        "measured_rollouts": 10,
        "learning_rate": 1e-6,
    },
    # one rollout of prompts_per_rollout prompts x num_generations samples, minibatches as in PPO; KL in the loss (k3)
    "grpo": {
        "prompts_per_rollout": 4,
        "num_generations": 4,
        "minibatch_size": 8,
        "micro_batch_size": 8,
        "max_prompt_length": 64,
        "max_new_tokens": 64,
        "temperature": 1.0,
        "kl_coef": 0.02,
        "clip_range": 0.2,
        "warmup_rollouts": 1,
        "measured_rollouts": 5,
        "learning_rate": 1e-6,
    },
    # batch_size preference pairs per optimizer step; the reference's log-probs are computed at every step
    "dpo": {
        "pairs": 256,
        "batch_size": 8,
        "max_length": 192,
        "beta": 0.1,
        "warmup_steps": 2,
        "measured_steps": 10,
        "learning_rate": 1e-6,
    },
    # lit-rlhf's vLLM engine in the ppo-vllm and async rows (the trainer stays fp32)
    "vllm": {"dtype": "bfloat16", "kv_cache_memory_gb": 1.0, "max_model_len": 256},
}

#: Every KEYWORD_EVERY-th word id is a keyword; GRPO's reward is the share of keywords in the response.
KEYWORD_EVERY = 7


def keyword_share(text: str) -> float:
    """Share of the words of ``text`` that are keywords (``w<id>`` with ``id % KEYWORD_EVERY == 0``); 0 when empty."""
    words = text.split()
    hits = sum(1 for w in words if w[:1] == "w" and w[1:].isdigit() and int(w[1:]) % KEYWORD_EVERY == 0)
    return hits / len(words) if words else 0.0


def keyword_reward(prompt: str, response: str, record: dict) -> float:
    """:func:`keyword_share` in the signature of lit-rlhf's ``FunctionReward``."""
    return keyword_share(response)


def sentence(rng: random.Random, vocab_size: int, low: int, high: int) -> str:
    """Words w3.. (ids 3..vocab_size-1); length log-uniform in [low, high], so short and long texts mix."""
    length = int(round(low * (high / low) ** rng.random()))
    return " ".join(f"w{rng.randrange(3, vocab_size)}" for _ in range(length))


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        bos_token="<eos>",
        model_max_length=MODEL["max_position_embeddings"],
    )


def build_models(root: Path, tokenizer, vocab_size: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    config = LlamaConfig(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=1, **MODEL)
    for name, factory, seed, extra in (
        ("policy", AutoModelForCausalLM, 0, {}),
        ("reward", AutoModelForSequenceClassification, 1, {"num_labels": 1}),
    ):
        torch.manual_seed(seed)
        fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
        model = factory.from_config(LlamaConfig(**fields, **extra))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def build_data(root: Path, vocab_size: int) -> None:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sft = SETTINGS["sft"]
    write_jsonl(
        data / "sft.jsonl",
        [
            {"prompt": sentence(rng, vocab_size, 8, 64), "response": sentence(rng, vocab_size, 8, 240)}
            for _ in range(sft["records"])
        ],
    )
    rm = SETTINGS["rm"]
    for k in rm["ks"]:
        groups = [
            {
                "prompt": sentence(rng, vocab_size, 8, 48),
                "responses": [sentence(rng, vocab_size, 8, 128) for _ in range(k)],
            }
            for _ in range(rm["groups"])
        ]
        write_jsonl(data / f"rm_k{k}.jsonl", groups)
        pairs = [
            {"prompt": g["prompt"], "chosen": g["responses"][i], "rejected": g["responses"][j]}
            for g in groups
            for i in range(k)
            for j in range(i + 1, k)
        ]
        random.Random(k).shuffle(pairs)  # a pairwise trainer shuffles its pairs; fixed here so every run sees the same
        write_jsonl(data / f"rm_k{k}_pairs.jsonl", pairs)
    ppo = SETTINGS["ppo"]
    write_jsonl(
        data / "prompts.jsonl",
        [{"prompt": sentence(rng, vocab_size, 8, ppo["max_prompt_length"])} for _ in range(ppo["prompts"])],
    )
    dpo_rng = random.Random(2)  # its own stream: the records above stay what they were
    write_jsonl(
        data / "dpo_pairs.jsonl",
        [
            {
                "prompt": sentence(dpo_rng, vocab_size, 8, 48),
                "chosen": sentence(dpo_rng, vocab_size, 8, 128),
                "rejected": sentence(dpo_rng, vocab_size, 8, 128),
            }
            for _ in range(SETTINGS["dpo"]["pairs"])
        ],
    )


def build_workspace(root: Path, vocab_size: int = 8192) -> dict:
    """Write the workspace (idempotent for the same arguments) and return its settings."""
    root = Path(root)
    settings = {"vocab_size": vocab_size, "model": MODEL, **SETTINGS}
    marker = root / "settings.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return settings
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save_pretrained(root / "tokenizer")
    build_models(root, tokenizer, vocab_size)
    build_data(root, vocab_size)
    marker.write_text(json.dumps(settings, indent=1))
    return settings


def load_settings(root: Path) -> dict:
    return json.loads((Path(root) / "settings.json").read_text())
