"""Sampling a policy on held-out prompts and measuring every sample: each judge's score, its length and its
log-ratio to a reference policy. The one evaluation path of ``lit-rlhf evaluate`` and the sandbox's report, probe
and over-optimisation curves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.data.batching import pad_sequences
from lit_rlhf.data.formats import DataFormat, convert_records
from lit_rlhf.data.records import DataSource, FieldMap, Record, read_records
from lit_rlhf.data.tokenize import render_prompt
from lit_rlhf.engines import HFEngine, RolloutEngine
from lit_rlhf.engines.base import SamplingSettings
from lit_rlhf.evaluation import response_logprob_sums
from lit_rlhf.rewards import Reward


@dataclass(frozen=True)
class EvalPrompts:
    """Held-out prompts, read as the PPO data module reads them (any prompt layout it detects).

    Attributes:
        records: Each prompt's record fields (judges such as the sandbox's gold labeler read them).
        texts: Each prompt as the policy reads it (chat template applied when the record is a chat).
    """

    records: list[dict[str, Any]]
    texts: list[str]


def read_prompts(
    source: DataSource,
    tokenizer,
    *,
    num_prompts: Optional[int] = None,
    format: DataFormat = "auto",
    fields: Optional[dict[str, str]] = None,
) -> EvalPrompts:
    """The first ``num_prompts`` prompts of ``source`` (all when None), rendered for ``tokenizer``."""
    records, field_map = convert_records(read_records(source), format, "prompts", FieldMap(fields or {}), tokenizer)
    return prompts_of(records[:num_prompts], tokenizer, field_map)


def prompts_of(records: Sequence[Record], tokenizer, fields: Optional[FieldMap] = None) -> EvalPrompts:
    """Already-read prompt records, rendered for ``tokenizer``."""
    fields = fields or FieldMap()
    return EvalPrompts([dict(r.data) for r in records], [render_prompt(tokenizer, r, fields) for r in records])


@dataclass
class PolicySamples:
    """One policy's samples: ``samples_per_prompt`` adjacent samples per prompt, in prompt order.

    Attributes:
        prompt_index: Index of each sample's prompt.
        responses: The decoded responses (up to their first EOS, special tokens removed).
        lengths: Response length in tokens (EOS included).
        scores: Each judge's score of each response, by judge name.
        logratio: ``log pi(y|x) - log pi_ref(y|x)`` of each response (summed over its tokens, at the sampling
            temperature): the k1 estimate of the sequence KL to the reference, unbiased on the policy's own
            samples; None without a reference.
    """

    prompt_index: list[int] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    logratio: Optional[list[float]] = None


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sample_and_score(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: EvalPrompts,
    judges: Sequence[Reward] = (),
    *,
    settings: SamplingSettings,
    samples_per_prompt: int = 1,
    reference: Optional[PreTrainedModel] = None,
    engine: Optional[RolloutEngine] = None,
    batch_size: int = 64,
    seed: Optional[int] = None,
) -> PolicySamples:
    """Sample ``samples_per_prompt`` responses per prompt from ``policy`` and measure every one: each judge's score
    (:meth:`Reward.score` on the :class:`~lit_rlhf.episodes.Episodes`), its length, and its log-ratio to
    ``reference``, all on the same samples.

    Args:
        policy: The generative model sampled (its weights as given: ``training=False`` for the engine).
        tokenizer: Its tokenizer (left padding is applied here).
        prompts: The prompts (:func:`read_prompts`).
        judges: Built reward components; each is reported under its ``name``.
        settings: Sampling settings (PPO's).
        samples_per_prompt: Responses per prompt.
        reference: The KL reference model, or None.
        engine: How responses are sampled. Default: :class:`~lit_rlhf.engines.HFEngine`.
        batch_size: Sequences per ``generate`` call.
        seed: Seed of the sampler (the caller's random state is restored afterwards); None: the current state.
    """
    engine = engine or HFEngine()
    device = _model_device(policy)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        measured = PolicySamples(scores={judge.name: [] for judge in judges})
        if reference is not None:
            measured.logratio = []
        per_call = max(1, batch_size // samples_per_prompt)
        for start in range(0, len(prompts.texts), per_call):
            texts = prompts.texts[start : start + per_call]
            ids, mask = pad_sequences([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id, side="left")
            episodes = engine.generate(
                policy,
                {"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                samples_per_prompt,
                settings,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                training=False,
            )
            indices = [start + i // samples_per_prompt for i in range(len(episodes))]
            episodes = episodes.with_values(tokenizer=tokenizer, records=[prompts.records[i] for i in indices])
            measured.prompt_index += indices
            measured.responses += episodes.response_texts
            measured.lengths += episodes.response_lengths.tolist()
            for judge in judges:
                measured.scores[judge.name] += judge.score(episodes).tolist()
            if reference is not None:
                temperature = settings.temperature
                ratio = response_logprob_sums(policy, episodes, temperature) - response_logprob_sums(
                    reference, episodes, temperature
                )
                measured.logratio += ratio.tolist()
    return measured
