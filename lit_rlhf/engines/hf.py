"""Rollout generation with Hugging Face ``generate`` on the training model itself."""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from torch import Tensor

from lit_rlhf.algorithms import entropy_from_logits, logprobs_from_logits
from lit_rlhf.distributed.generation import sample_continuations
from lit_rlhf.engines.base import RolloutEngine, SamplingSettings
from lit_rlhf.episodes import Episodes, concat_responses, pad_columns
from lit_rlhf.random_state import seeded


class SampledTokenLogprobs:
    """A ``generate`` logits processor that records each sampled token's log-prob and the entropy of the
    policy's distribution at ``temperature``, so the rollout needs no second policy forward pass for them.

    ``generate`` runs custom processors before its sampling warpers (temperature, top-p), and the
    sampling config of :func:`lit_rlhf.distributed.generation.sample_continuations` neutralises every other
    processor, so the scores seen here are the raw logits: the log-probs are those of the full
    distribution at ``temperature``, exactly what the trainer's scoring forward pass gives (tested). Step ``t``
    sees the token of step ``t - 1`` at the end of ``input_ids``; :meth:`finish` takes the last one.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.logprobs: list[Tensor] = []
        self.entropy: list[Tensor] = []
        self._pending: Optional[Tensor] = None  # the last step's logits at temperature; its token not yet drawn

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self._pending is not None:
            self._take(input_ids[:, -1])
        self._pending = scores.float() / (self.temperature if self.temperature > 0 else 1.0)  # a copy: warpers follow
        return scores

    def _take(self, tokens: Tensor) -> None:
        logits, self._pending = self._pending, None
        self.logprobs.append(logprobs_from_logits(logits, tokens))
        self.entropy.append(entropy_from_logits(logits))

    def finish(self, responses: Tensor) -> tuple[Tensor, Tensor]:
        """``([B, R] log-probs, [B, R] entropy)`` of ``responses`` (what ``generate`` returned after the prompt)."""
        if self._pending is not None and len(self.logprobs) < responses.shape[1]:
            self._take(responses[:, len(self.logprobs)])
        width = responses.shape[1]
        if len(self.logprobs) < width:
            raise RuntimeError(f"recorded {len(self.logprobs)} generation steps for {width} response tokens")
        return torch.stack(self.logprobs[:width], dim=1), torch.stack(self.entropy[:width], dim=1)


@torch.no_grad()
def hf_generate(
    model,
    prompts: dict[str, Tensor],
    num_samples: int,
    settings: SamplingSettings,
    *,
    eos_token_id: int,
    pad_token_id: int,
) -> Episodes:
    """``num_samples`` responses per prompt (adjacent rows) from ``model`` as :class:`~lit_rlhf.episodes.Episodes` with
    the sampled tokens' log-probs and the entropy recorded while sampling (no second forward pass)."""
    ids = prompts["input_ids"].repeat_interleave(num_samples, dim=0)
    mask = prompts["attention_mask"].repeat_interleave(num_samples, dim=0)
    chunk = settings.generation_batch_size or len(ids)
    recorders = [SampledTokenLogprobs(settings.temperature) for _ in range(math.ceil(len(ids) / chunk))]
    responses = [
        sample_continuations(
            model,
            i,
            m,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            logits_processor=[recorder],
        )
        for i, m, recorder in zip(ids.split(chunk), mask.split(chunk), recorders)
    ]
    episodes = concat_responses(ids, mask, pad_columns(responses, pad_token_id), eos_token_id)
    recorded = [recorder.finish(out) for recorder, out in zip(recorders, responses)]
    logprobs, entropy = (pad_columns(list(parts), 0.0) for parts in zip(*recorded))
    return episodes.with_values(logprobs=logprobs, entropy=entropy)


class HFEngine(RolloutEngine):
    """Hugging Face ``generate`` on the training model itself (the default): no weight sync needed, and the
    log-probs recorded while sampling are the trainer's own."""

    def generate(
        self,
        model,
        prompts: dict[str, Tensor],
        num_samples: int,
        settings: SamplingSettings,
        *,
        eos_token_id: int,
        pad_token_id: int,
        training: bool = True,
        seed: Optional[int] = None,
    ) -> Episodes:
        with seeded(seed, model.device) if seed is not None else contextlib.nullcontext():
            return hf_generate(
                model, prompts, num_samples, settings, eos_token_id=eos_token_id, pad_token_id=pad_token_id
            )
