"""The one ``generate`` entry point (:func:`sample_continuations`): sharded models are gathered once per call and
every rank steps until all are done (``synced_gpus``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from lit_rlhf.distributed.sharding import gathered_weights, is_sharded


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
    logits_processor: Optional[list] = None,
) -> torch.Tensor:
    """Sampled continuations ``[B, R]`` (``R <= max_new_tokens``) of a left-padded prompt batch.

    Uses ``generate`` with the KV cache; rows that emit ``eos_token_id`` stop there (later columns
    are ``pad_token_id``), and the batch stops once every row has. ``temperature == 0`` decodes
    greedily. Sampling is exactly the policy's softmax at ``temperature`` with nucleus ``top_p``:
    every other processor that ``generate`` would take from the model's saved generation config
    (top-k, repetition penalty, minimum length, ...) is set to its neutral value, because PPO's
    log-probs must be those of the distribution the tokens were drawn from. ``logits_processor``
    runs before the sampling warpers (temperature, top-p) and so sees the raw logits (e.g.
    :class:`lit_rlhf.engines.hf.SampledTokenLogprobs`).

    Single device and DDP call ``generate`` on the local model. A sharded model (FSDP2 or FSDP1)
    is gathered once for the whole call (:func:`gathered_weights`, not once per token) and every
    rank keeps stepping until all ranks are done (``synced_gpus``): ranks whose rows finish early
    would otherwise stop joining the all-gathers and the others would hang.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    sampling = temperature > 0
    config = GenerationConfig(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    sharded = is_sharded(model)
    synced = sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with gathered_weights(model):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            synced_gpus=synced,
            logits_processor=LogitsProcessorList(logits_processor or []),
        )
    return output[:, input_ids.shape[1] :]
