"""Every policy sampled and measured on the same prompts: the sample rows of ``samples.jsonl`` and each policy's
held-out loss."""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from lit_rlhf.engines import RolloutEngine
from lit_rlhf.engines.base import SamplingSettings
from lit_rlhf.evaluate.scoring import EvalPrompts, PolicySamples, sample_and_score
from lit_rlhf.evaluation import lm_loss_on_texts
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.rewards import Reward


def sample_rows(
    name: str,
    samples: PolicySamples,
    prompts: EvalPrompts,
    samples_per_prompt: int,
    by: Optional[str] = None,
) -> list[dict[str, Any]]:
    """One JSON-ready row per sample: policy, prompt (index, ``id`` when the record has one, text), sample number,
    response, length in tokens, each judge's score, the log-ratio to the reference (``kl``), and the value of the
    ``by`` field of its prompt record (``group``) when ``by`` is set."""
    rows = []
    for i, index in enumerate(samples.prompt_index):
        record = prompts.records[index]
        row = {
            "policy": name,
            "prompt_index": index,
            "prompt_id": record.get("id", index),
            "sample": i % samples_per_prompt,
            "prompt": prompts.texts[index],
            "response": samples.responses[i],
            "length": samples.lengths[i],
            "scores": {judge: values[i] for judge, values in samples.scores.items()},
            "kl": samples.logratio[i] if samples.logratio is not None else 0.0,
        }
        if by is not None:
            row["group"] = str(record.get(by, "(missing)"))
        rows.append(row)
    return rows


def evaluate_policies(
    policies: Mapping[str, str],
    reference: str,
    prompts: EvalPrompts,
    judges: Sequence[Reward],
    *,
    settings: SamplingSettings,
    samples_per_prompt: int,
    seed: int,
    engine: Optional[RolloutEngine] = None,
    batch_size: int = 64,
    by: Optional[str] = None,
    texts: Sequence[str] = (),
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], dict[str, Optional[float]]]:
    """Sample every policy (one at a time; the reference stays loaded for the KL) and measure its samples.

    Every policy is sampled with the same ``seed`` (common random numbers: the comparison with the reference is less
    noisy, and a policy identical to the reference ties on every sample). Returns the sample rows
    (:func:`sample_rows`) and each policy's next-token loss on ``texts`` (None without texts).
    """
    reference_model = load_causal_lm(policies[reference], trainable=False).to(device)
    rows: list[dict[str, Any]] = []
    heldout: dict[str, Optional[float]] = {}
    for name, source in policies.items():
        tokenizer = load_tokenizer(source, padding_side="left")
        model = reference_model if name == reference else load_causal_lm(source, trainable=False).to(device)
        if engine is not None:
            engine.setup(model, source)
        measured = sample_and_score(
            model,
            tokenizer,
            prompts,
            judges,
            settings=settings,
            samples_per_prompt=samples_per_prompt,
            reference=None if name == reference else reference_model,
            engine=engine,
            batch_size=batch_size,
            seed=seed,
        )
        rows += sample_rows(name, measured, prompts, samples_per_prompt, by)
        heldout[name] = lm_loss_on_texts(model, tokenizer, texts, batch_size=batch_size) if texts else None
        print(f"[evaluate] {name}: {len(measured.responses)} samples", flush=True)
        del model
        gc.collect()
    return rows, heldout
