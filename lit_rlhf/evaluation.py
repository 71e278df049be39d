"""Evaluation helpers shared by callbacks, ``lit-rlhf sample`` and the sandbox pipeline:
generating responses for prompts, and the LM loss on held-out text (the "alignment tax")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Optional

import torch
from lightning.pytorch import LightningModule
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.algorithms.lm import next_token_loss
from lit_rlhf.data.batching import collate_examples, pad_sequences
from lit_rlhf.data.tokenize import encode_text
from lit_rlhf.distributed.generation import sample_continuations
from lit_rlhf.episodes import Episodes, concat_responses
from lit_rlhf.models.heads import position_ids_from_mask


@torch.no_grad()
def sample_episodes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 32,
) -> Iterator[Episodes]:
    """Sampled responses for each prompt, ``num_return_sequences`` each (adjacent), in prompt order, one
    :class:`~lit_rlhf.episodes.Episodes` (carrying ``tokenizer``) per ``batch_size`` prompts. ``temperature == 0``
    decodes greedily. Sampling is the same as in PPO rollouts
    (:func:`lit_rlhf.distributed.generation.sample_continuations`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(prompts), batch_size):
            ids, mask = pad_sequences(
                [tokenizer(p)["input_ids"] for p in prompts[start : start + batch_size]],
                tokenizer.pad_token_id,
                side="left",
            )  # left padding: every row continues from the last column
            ids, mask = (
                ids.repeat_interleave(num_return_sequences, 0).to(device),
                mask.repeat_interleave(num_return_sequences, 0).to(device),
            )
            responses = sample_continuations(
                model,
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            yield concat_responses(ids, mask, responses, tokenizer.eos_token_id).with_values(tokenizer=tokenizer)
    finally:
        model.train(was_training)


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
    episodes = sample_episodes(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        num_return_sequences=num_return_sequences,
        batch_size=batch_size,
    )
    return [text for batch in episodes for text in sampled_texts(batch)]


def sampled_texts(episodes: Episodes) -> list[str]:
    """Each response decoded whole (special tokens removed), as :func:`generate_responses` returns them."""
    return episodes.tokenizer.batch_decode(episodes.responses, skip_special_tokens=True)


@torch.no_grad()
def response_logprob_sums(model: PreTrainedModel, episodes: Episodes, temperature: float = 1.0) -> torch.Tensor:
    """``[B]`` log-probability of each sampled response under ``model`` (summed over its tokens, EOS
    included), with the logits divided by ``temperature`` as when sampling. The difference of two
    models' sums is the k1 estimate of their sequence KL on these samples (unbiased when the samples
    come from the first model)."""
    was_training = model.training
    model.eval()
    response_length = episodes.response_mask.shape[1]
    logits = (
        model(
            input_ids=episodes.input_ids,
            attention_mask=episodes.attention_mask,
            position_ids=position_ids_from_mask(episodes.attention_mask),
            logits_to_keep=response_length + 1,
            use_cache=False,
        )
        .logits[:, :-1]
        .float()
    )  # position P - 1 + t predicts response token t
    model.train(was_training)
    if temperature > 0:
        logits = logits / temperature
    tokens = episodes.input_ids[:, episodes.prompt_length :]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (logprobs * episodes.response_mask).sum(-1)


@torch.no_grad()
def lm_loss_on_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: Optional[int] = None,
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


def _generative(model) -> Optional[PreTrainedModel]:
    can_generate = model is not None and hasattr(model, "generate") and model.get_output_embeddings() is not None
    return model if can_generate else None


@contextlib.contextmanager
def evaluated_policy(pl_module: LightningModule, weights: str = "exported") -> Iterator[Optional[PreTrainedModel]]:
    """The generative model a stage module evaluates, or None when it has none (a reward model).

    ``weights="exported"``: the model as it is exported, i.e. inside the module's ``evaluation_weights()``
    (the EMA weights swapped in while the block runs, PPO's paper setting). ``weights="trained"``: the weights
    being optimised (``policy`` or ``model``).
    """
    if weights not in ("exported", "trained"):
        raise ValueError(f"weights must be 'exported' or 'trained', got {weights!r}")
    if weights == "exported" and hasattr(pl_module, "evaluation_weights"):
        with pl_module.evaluation_weights() as model:
            yield _generative(model)
        return
    yield next(
        (m for m in (_generative(getattr(pl_module, name, None)) for name in ("policy", "model")) if m is not None),
        None,
    )
