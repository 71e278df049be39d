"""Regenerate the shipped sandbox assets: data files, tokenizer and tiny base-model config.

Run ``python -m lit_rlhf.sandbox.assets_build`` (optionally ``--out DIR --seed N``). The output
is deterministic: running it again over the shipped assets leaves them byte-identical.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import LlamaConfig, PreTrainedTokenizerFast

from lit_rlhf.sandbox.paths import SANDBOX_ASSETS
from lit_rlhf.sandbox.tokenizer import MODEL_MAX_LENGTH, build_tokenizer
from lit_rlhf.sandbox.world import write_sandbox_data


def tokenizer_corpus(data_dir: Path) -> list[str]:
    """Lines the tokenizer learns merges from: pretraining text, and the demonstrations' and PPO
    prompts with the correct answers. The demonstrations' chatter is left out: it is made of words
    the world already has, and must not change the vocabulary."""
    lines = (data_dir / "pretrain.txt").read_text(encoding="utf-8").splitlines()
    for name, with_answer in (("sft_train.jsonl", True), ("prompts_train.jsonl", False)):
        with open(data_dir / name, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                lines.append(record["prompt"] + (" " + str(record["answer"]) if with_answer else ""))
    return lines


def base_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 352,
) -> LlamaConfig:
    """A ~1M-parameter Llama config whose vocabulary and special ids match ``tokenizer``.

    Args:
        tokenizer: The sandbox tokenizer.
        hidden_size: Model width.
        num_layers: Decoder layers.
        num_heads: Attention heads (also key/value heads: no grouped-query attention).
        intermediate_size: MLP width.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_assets(out_dir: str | Path = SANDBOX_ASSETS, seed: int = 0) -> Path:
    """Write ``data/``, ``tokenizer/`` and ``base_config.json`` under ``out_dir``; return it."""
    out = Path(out_dir)
    data_dir = out / "data"
    write_sandbox_data(data_dir, seed=seed)
    tokenizer = build_tokenizer(tokenizer_corpus(data_dir))
    tokenizer.save_pretrained(out / "tokenizer")
    base_config(tokenizer).to_json_file(out / "base_config.json")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(SANDBOX_ASSETS), help="assets directory to (re)write")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    args = parser.parse_args(argv)
    print(f"wrote sandbox assets to {build_assets(args.out, args.seed)}")


if __name__ == "__main__":
    main()
