"""Evaluation helpers shared by callbacks, ``lit-rlhf sample`` and the sandbox pipeline:
generating responses for prompts, and the LM loss on held-out text (the "alignment tax")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from lightning.pytorch import LightningModule
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.algorithms.lm import next_token_loss
from lit_rlhf.data.batching import collate_examples, pad_sequences
from lit_rlhf.data.tokenize import encode_text
from lit_rlhf.distributed import generate_rollout


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 32,
) -> list[str]:
    """Responses (decoded, special tokens removed) for each prompt, ``num_return_sequences`` each,
    in prompt order. ``temperature == 0`` decodes greedily. Sampling is the same as in PPO rollouts."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    responses: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_sequences(
            [tokenizer(p)["input_ids"] for p in prompts[start : start + batch_size]], tokenizer.pad_token_id, side="left"
        )  # left padding: every row continues from the last column
        generated = generate_rollout(
            model,
            ids.repeat_interleave(num_return_sequences, 0).to(device),
            mask.repeat_interleave(num_return_sequences, 0).to(device),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        responses += tokenizer.batch_decode(generated, skip_special_tokens=True)
    model.train(was_training)
    return responses


@torch.no_grad()
def lm_loss_on_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, batch_size: int = 32, max_length: Optional[int] = None
) -> float:
    """Token-weighted mean next-token loss of ``model`` on ``texts``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        examples = [encode_text(tokenizer, t) for t in texts[start : start + batch_size]]
        if max_length:
            examples = [type(e)(e.input_ids[:max_length], e.labels[:max_length]) for e in examples]
        batch = {k: v.to(device) for k, v in collate_examples(examples, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss, n = next_token_loss(logits, batch["labels"])
        total += float(loss) * int(n)
        count += int(n)
    model.train(was_training)
    return total / max(count, 1)


def policy_for_evaluation(pl_module: LightningModule) -> Optional[PreTrainedModel]:
    """The generative model a stage module evaluates: ``eval_policy()`` when the module defines it
    (PPO: the EMA policy when enabled), else its ``policy`` or ``model`` if that can generate."""
    if hasattr(pl_module, "eval_policy"):
        return pl_module.eval_policy()
    for name in ("policy", "model"):
        model = getattr(pl_module, name, None)
        if model is not None and hasattr(model, "generate") and model.get_output_embeddings() is not None:
            return model
    return None
