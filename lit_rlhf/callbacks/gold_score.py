"""Gold-score evaluation: does the policy actually get better, and what does it cost?

With real humans the gold score is what InstructGPT's labelers measured after training; in the
sandbox a gold labeler scores any response, so every validation can report it. The callback also
reports the LM loss on held-out pretraining text: the "alignment tax" that PPO-ptx pays back.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lit_rlhf.data.records import FieldMap, read_records
from lit_rlhf.data.tokenize import render_prompt
from lit_rlhf.evaluation import generate_responses, lm_loss_on_texts, policy_for_evaluation


def load_object(path: str):
    """``package.module.Name`` -> the object."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class GoldScoreEvaluation(Callback):
    """On every validation: generate for held-out prompts, log the mean gold score (and per task
    family), and the LM loss on held-out pretraining text. Works with every stage whose module has a
    generative model (SFT, PPO); for others it logs nothing but the held-out loss is skipped too.

    Args:
        prompts: Held-out prompt records; the labeler reads their fields (the sandbox's carry the answer).
        labeler: Import path of a class with ``score(record, response) -> float``.
        heldout_text: Held-out pretraining text (``.txt`` or ``{"text"}`` records) for the alignment-tax loss.
        num_prompts: Evaluate the first ``num_prompts`` prompts.
        num_texts: Evaluate the first ``num_texts`` held-out texts.
        max_new_tokens: Longest response in tokens.
        temperature: Sampling temperature; 0 decodes greedily. PPO optimises the policy's sampling
            distribution at its rollout temperature (1 in the paper), so that is the policy as trained.
        samples_per_prompt: Sampled responses per prompt (each scored; the mean is logged). Raise it
            when ``temperature > 0`` to lower the noise of the mean; greedy decoding needs 1.
        seed: Seed of the sampler: every evaluation draws the same random numbers, and the training
            run's own random state is left untouched.
        batch_size: Prompts per generate call.
        group_field: Record field whose values split the mean score (``family`` in the sandbox); None: no split.
        prefix: Name of the logged metrics (``gold/score``, ``gold/score_<family>``); a second
            instance with another prefix (``gold_greedy``) logs a second decoding side by side.
    """

    def __init__(
        self,
        prompts: str,
        labeler: str = "lit_rlhf.sandbox.labeler.GoldLabeler",
        heldout_text: Optional[str] = None,
        num_prompts: int = 200,
        num_texts: int = 200,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        samples_per_prompt: int = 1,
        seed: int = 1234,
        batch_size: int = 64,
        group_field: Optional[str] = "family",
        prefix: str = "gold",
    ):
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
        self.records = read_records(prompts)[:num_prompts]
        self.labeler = load_object(labeler)()
        self.texts = [r.data["text"] for r in read_records(heldout_text)[:num_texts]] if heldout_text else []
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        # Greedy decoding gives the same response every time: one sample says everything.
        self.samples_per_prompt = samples_per_prompt if temperature > 0 else 1
        self.seed = seed
        self.batch_size = batch_size
        self.group_field = group_field
        self.prefix = prefix

    def evaluate(self, model, tokenizer, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """Sums and counts of this rank's share (reduce them across ranks, then divide)."""
        records = self.records[rank::world_size]
        prompts = [render_prompt(tokenizer, r, FieldMap()) for r in records]
        k = self.samples_per_prompt
        device = getattr(model, "device", torch.device("cpu"))  # a Hugging Face model knows its device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + rank)
            responses = generate_responses(
                model, tokenizer, prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                num_return_sequences=k, batch_size=max(1, self.batch_size // k),
            )
        # Keys come from all records, not this rank's share, so every rank reduces the same keys.
        groups = sorted({str(r.data[self.group_field]) for r in self.records if self.group_field in r.data})
        score_key = f"{self.prefix}/score"
        sums: dict[str, float] = {key: 0.0 for g in [score_key] + [f"{score_key}_{g}" for g in groups] for key in (g, g + "/count")}
        for i, response in enumerate(responses):
            record = records[i // k]
            score = self.labeler.score(record.data, response)
            keys = [score_key] + ([f"{score_key}_{record.data[self.group_field]}"] if self.group_field in record.data else [])
            for key in keys:
                sums[key] += score
                sums[key + "/count"] += 1
        if self.texts:
            texts = self.texts[rank::world_size]  # every rank has some: num_texts >> world size
            sums["heldout/lm_loss"] = lm_loss_on_texts(model, tokenizer, texts, batch_size=self.batch_size) * len(texts)
            sums["heldout/lm_loss/count"] = len(texts)
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in sums.items()}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model = policy_for_evaluation(pl_module)
        if model is None:
            rank_zero_warn(f"GoldScoreEvaluation: {type(pl_module).__name__} has no generative model; nothing to evaluate.")
            return
        sums = self.evaluate(model, pl_module.tokenizer, trainer.global_rank, trainer.world_size)
        totals = {k: trainer.strategy.reduce(v.to(pl_module.device), reduce_op="sum") for k, v in sums.items()}
        metrics = {k: float(v / totals[k + "/count"]) for k, v in totals.items() if not k.endswith("/count") and totals[k + "/count"] > 0}
        pl_module.log_dict(metrics, rank_zero_only=True)
