"""The sandbox's callbacks. Gold-score evaluation: does the policy actually get better, and what does it cost?

With real humans the gold score is what InstructGPT's labelers measured after training; in the
sandbox the gold labeler (:class:`~lit_rlhf.sandbox.labeler.GoldLabeler`) scores any response, so every
validation can report it (:class:`GoldScoreEvaluation`, with the LM loss on held-out pretraining text: the
"alignment tax" that PPO-ptx pays back), and :class:`GoldProxyKLProbe` measures gold score, proxy (RM) score
and KL to SFT of one policy on the same samples (reward over-optimisation curves).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lit_rlhf.data.records import read_records
from lit_rlhf.engines.base import SamplingSettings
from lit_rlhf.evaluate.scoring import PolicySamples, prompts_of, sample_and_score
from lit_rlhf.evaluation import evaluated_policy, lm_loss_on_texts
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model
from lit_rlhf.rewards import RewardModelScore
from lit_rlhf.sandbox.rewards import GoldReward


class GoldScoreEvaluation(Callback):
    """On every validation: generate for held-out prompts, log the mean gold score (and per task
    family), and the LM loss on held-out pretraining text. Works with every stage whose module has a
    generative model (SFT, PPO); for others it logs nothing but the held-out loss is skipped too.

    Args:
        prompts: Held-out prompt records; the gold labeler reads their fields (the sandbox's carry the answer).
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
        scored = score_samples(
            model,
            tokenizer,
            records,
            samples_per_prompt=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            batch_size=self.batch_size,
            seed=self.seed + rank,
        )
        # Keys come from all records, not this rank's share, so every rank reduces the same keys.
        groups = sorted({str(r.data[self.group_field]) for r in self.records if self.group_field in r.data})
        score_key = f"{self.prefix}/score"
        sums: dict[str, float] = {
            key: 0.0 for g in [score_key] + [f"{score_key}_{g}" for g in groups] for key in (g, g + "/count")
        }
        for index, score in zip(scored.prompt_index, scored.scores["gold"]):
            data = records[index].data
            for key in [score_key] + ([f"{score_key}_{data[self.group_field]}"] if self.group_field in data else []):
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
        with evaluated_policy(pl_module) as model:
            if model is None:
                rank_zero_warn(
                    f"GoldScoreEvaluation: {type(pl_module).__name__} has no generative model; nothing to evaluate."
                )
                return
            sums = self.evaluate(model, pl_module.tokenizer, trainer.global_rank, trainer.world_size)
        totals = {k: trainer.strategy.reduce(v.to(pl_module.device), reduce_op="sum") for k, v in sums.items()}
        metrics = {
            k: float(v / totals[k + "/count"])
            for k, v in totals.items()
            if not k.endswith("/count") and totals[k + "/count"] > 0
        }
        pl_module.log_dict(metrics, rank_zero_only=True)


@torch.no_grad()
def score_samples(
    policy,
    tokenizer,
    records: list,
    *,
    reward_model=None,
    reference=None,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: Optional[int] = None,
) -> PolicySamples:
    """Sample ``samples_per_prompt`` responses per record from ``policy`` and measure every one by the evaluation
    path of ``lit-rlhf evaluate`` (:func:`~lit_rlhf.evaluate.scoring.sample_and_score`): the gold labeler
    (``scores["gold"]``), the reward model's centred score (``scores["proxy"]``, when given) and the log-ratio to
    ``reference``, all on the same samples."""
    judges = [GoldReward(name="gold")]
    if reward_model is not None:
        judges.append(RewardModelScore.loaded(reward_model, chunk_size=batch_size, name="proxy"))
    return sample_and_score(
        policy,
        tokenizer,
        prompts_of(records, tokenizer),
        judges,
        settings=SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature),
        samples_per_prompt=samples_per_prompt,
        reference=reference,
        batch_size=batch_size,
        seed=seed,
    )


class GoldProxyKLProbe(Callback):
    """Every few PPO rollouts: gold score, proxy (reward-model) score and KL to the SFT model of ONE policy,
    all measured on the same samples for held-out prompts, so the three can be plotted against each other
    (reward over-optimisation curves: gold peaks and falls while proxy keeps rising, as KL grows).

    The reference (SFT) and reward models are loaded by the probe itself from the module's ``policy`` and
    ``reward_model`` hyperparameters (or the paths given here); the policy measured is the module's
    exported one (PPO: its EMA weights when enabled, swapped in by ``evaluation_weights()``) or its trained
    ``policy``.
    Logs ``<prefix>/gold``, ``<prefix>/proxy``, ``<prefix>/kl`` (nats per sequence), ``<prefix>/sqrt_kl`` and
    ``<prefix>/rollout`` to the trainer's loggers at the current ``global_step``; rollout 0 (before any
    update: the SFT policy) is measured when training starts.

    Args:
        prompts: Held-out prompt records; the gold labeler reads their fields.
        every_n_rollouts: Measure after every this many rollouts (training steps), and after the last one.
        num_prompts: Evaluate the first ``num_prompts`` prompts.
        samples_per_prompt: Responses sampled per prompt; more lowers the noise of all three means.
        max_new_tokens: Longest response in tokens (as in the rollouts).
        temperature: Sampling temperature; KL log-probs are taken at the same temperature (as PPO's).
        policy: ``eval`` measures the policy as exported (EMA weights when enabled); ``trained`` the weights
            being optimised.
        reference: KL reference directory. Default: the module's ``hparams.policy`` (the SFT model).
        reward_model: Proxy reward-model directory. Default: the module's ``hparams.reward_model``; with neither,
            only gold and KL are logged.
        seed: Seed of the sampler: every measurement draws the same random numbers, and the run's own
            random state is left untouched.
        batch_size: Sequences per generate call.
        history_file: Also append every measurement as a JSON line here.
        prefix: Name prefix of the logged metrics.
    """

    def __init__(
        self,
        prompts: str,
        every_n_rollouts: int = 4,
        num_prompts: int = 100,
        samples_per_prompt: int = 4,
        max_new_tokens: int = 24,
        temperature: float = 1.0,
        policy: Literal["eval", "trained"] = "eval",
        reference: Optional[str] = None,
        reward_model: Optional[str] = None,
        seed: int = 4321,
        batch_size: int = 128,
        history_file: Optional[str] = None,
        prefix: str = "probe",
    ):
        if every_n_rollouts < 1 or samples_per_prompt < 1 or num_prompts < 1:
            raise ValueError(
                f"every_n_rollouts, samples_per_prompt and num_prompts must be at least 1, got {every_n_rollouts}, "
                f"{samples_per_prompt}, {num_prompts}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (the KL is of the sampling distribution), got {temperature}")
        self.records = read_records(prompts)[:num_prompts]
        self.every_n_rollouts, self.samples_per_prompt = every_n_rollouts, samples_per_prompt
        self.max_new_tokens, self.temperature, self.which = max_new_tokens, temperature, policy
        self.reference_source, self.reward_source = reference, reward_model
        self.seed, self.batch_size, self.history_file, self.prefix = seed, batch_size, history_file, prefix
        self.history: list[dict[str, float]] = []
        self.rollouts = 0
        self._measured_at: Optional[int] = None
        self._reference = self._reward_model = None

    def measure(self, policy, tokenizer, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """Sums and counts of this rank's share of the prompts (reduce them across ranks, then divide)."""
        scored = score_samples(
            policy,
            tokenizer,
            self.records[rank::world_size],
            reward_model=self._reward_model,
            reference=self._reference,
            samples_per_prompt=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            batch_size=self.batch_size,
            seed=self.seed + rank,
        )
        gold = scored.scores["gold"]
        sums = {"gold": sum(gold), "kl": sum(scored.logratio), "count": len(gold)}
        if "proxy" in scored.scores:
            sums["proxy"] = sum(scored.scores["proxy"])
        return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in sums.items()}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        hparams = pl_module.hparams
        device = pl_module.device
        reference_source = self.reference_source or getattr(hparams, "policy", None)
        if reference_source is None:
            raise ValueError(
                f"GoldProxyKLProbe: {type(pl_module).__name__} has no `policy` hyperparameter; set the probe's "
                "`reference` (the SFT model directory)"
            )
        self._reference = load_causal_lm(reference_source, trainable=False).to(device)
        reward_source = self.reward_source or getattr(hparams, "reward_model", None)
        if reward_source is None:
            rank_zero_warn(
                "GoldProxyKLProbe: the module has no reward_model and none was given; logging gold and KL only."
            )
        else:
            self._reward_model = load_scalar_model(reward_source, trainable=False).to(device)
        self.rollouts = int(getattr(pl_module, "rollouts_done", 0) or 0)  # a resumed run continues its count
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.rollouts += 1
        if self.rollouts % self.every_n_rollouts == 0:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._measured_at != self.rollouts:
            self._record(trainer, pl_module)
        self._reference = self._reward_model = None  # frozen copies: free them with the run

    def _record(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with evaluated_policy(pl_module, "exported" if self.which == "eval" else "trained") as policy:
            if policy is None:
                raise ValueError(f"GoldProxyKLProbe: {type(pl_module).__name__} has no generative policy to measure")
            sums = self.measure(policy, pl_module.tokenizer, trainer.global_rank, trainer.world_size)
        totals = {k: float(trainer.strategy.reduce(v.to(pl_module.device), reduce_op="sum")) for k, v in sums.items()}
        count = max(totals.pop("count"), 1.0)
        metrics = {f"{self.prefix}/{k}": v / count for k, v in totals.items()}
        metrics[f"{self.prefix}/sqrt_kl"] = max(metrics[f"{self.prefix}/kl"], 0.0) ** 0.5
        metrics[f"{self.prefix}/rollout"] = float(self.rollouts)
        self._measured_at = self.rollouts
        self.history.append({**metrics, "step": float(trainer.global_step)})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            if self.history_file:
                Path(self.history_file).parent.mkdir(parents=True, exist_ok=True)
                with open(self.history_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(self.history[-1]) + "\n")
