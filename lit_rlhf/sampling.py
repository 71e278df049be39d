"""``lit-rlhf sample``: K sampled responses per prompt, written as JSONL ready for labeling.

This is the step InstructGPT did with its labelers (section 3.4): sample several outputs of the
current model for each prompt, then have people rank them. Each output line holds the prompt
record's own fields plus ``"responses": [K strings]``; a labeler (a person, a tool, or the
sandbox's gold labeler: ``lit-rlhf sandbox label``) turns it into comparison records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from lit_rlhf.atomic import atomic_file
from lit_rlhf.data.records import DataSource, FieldMap, read_records
from lit_rlhf.data.tokenize import render_prompt
from lit_rlhf.errors import check_option
from lit_rlhf.evaluation import generate_responses
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer


def sample_responses(
    model: str,
    prompts: DataSource,
    out: str,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    limit: Optional[int] = None,
    fields: Optional[dict[str, str]] = None,
    seed: int = 0,
) -> Path:
    """Sample ``k`` responses per prompt from a Hugging Face model directory.

    Args:
        model: Model directory (e.g. ``runs/sft/model``), hub id or .gguf file.
        prompts: Prompt records ({"prompt"} or {"messages"}): a file or datasets arguments.
        out: Output JSONL path.
        k: Responses per prompt (InstructGPT: 4 to 9).
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold (1 = off).
        max_new_tokens: Longest response in tokens.
        batch_size: Prompts per generate call.
        limit: Use only the first ``limit`` prompts.
        fields: Field renames, canonical name -> name in your data.
        seed: Seed of the sampler; same seed, same responses.
    """
    check_option("k", k, min=2, integer=True)  # fewer than 2 responses make no comparison
    check_option("temperature", temperature, min=0)
    check_option("top_p", top_p, min=0, max=1, min_open=True)
    check_option("max_new_tokens", max_new_tokens, min=1, integer=True)
    check_option("batch_size", batch_size, min=1, integer=True)
    check_option("limit", limit, min=1, integer=True)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model, padding_side="left")
    policy = load_causal_lm(model, trainable=False)
    field_map = FieldMap(fields or {})
    records = read_records(prompts)[:limit]
    out_path = Path(out)
    prompt_texts = [render_prompt(tokenizer, r, field_map) for r in records]
    responses = generate_responses(
        policy,
        tokenizer,
        prompt_texts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        num_return_sequences=k,
        batch_size=batch_size,
    )
    with atomic_file(out_path) as f:  # a killed run leaves the previous file, never half of a new one
        for i, record in enumerate(records):
            f.write(json.dumps(dict(record.data, responses=responses[i * k : (i + 1) * k]), ensure_ascii=False) + "\n")
    return out_path


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import auto_cli

    path = auto_cli(sample_responses, args=argv, as_positional=False, prog="lit-rlhf sample")
    print(f"wrote {path}")
