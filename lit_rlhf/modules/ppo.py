"""Stage 3 — PPO-ptx (InstructGPT section 3.5 eq. 2, appendix C.4), and its critic-free relatives.

One ``training_step`` is one PPO iteration on one rollout batch (batch vocabulary:
:mod:`lit_rlhf.modules.rollout`):

1. **generate** ``samples_per_prompt`` responses per prompt with the rollout engine (eval mode);
2. **score**: reference log-probs, values (with a critic), and the weighted sum of the reward
   components (default: the reward model's centred score);
3. **rewards**: ``-beta * KL_t`` per token plus the score on the last (or the KL as a loss term);
   advantages from GAE, or from the other samples of the prompt (``rloo`` / ``grpo``, no critic);
4. **update**: ``ppo_epochs`` x minibatches, each ONE optimizer step: policy loss plus
   ``value_loss_coef`` x value loss plus ``gamma_ptx`` x the ptx next-token loss, each normalised
   over the whole minibatch, all micro-batches and ranks (:mod:`lit_rlhf.algorithms.aggregation`).

Subclass hooks: :meth:`generate_rollout`, :meth:`reference_logprobs`, :meth:`score_responses`,
:meth:`compute_rewards`, :meth:`estimate_advantages`, :meth:`policy_loss`, :meth:`value_loss`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_rlhf.algorithms import (
    AdaptiveKLController, FixedKLController, LossAggregation, TokenLoss, aggregate_loss, clipped_policy_loss, clipped_value_loss,
    entropy_from_logits, gae_advantages, grpo_advantages, kl_penalty, logprobs_from_logits, masked_sum, per_token_rewards,
    rloo_advantages, step_normalizer, whiten,
)
from lit_rlhf.data.common import resolve_seed
from lit_rlhf.distributed.collectives import all_reduce_mean, global_masked_moments, local_backward, sync_gradients
from lit_rlhf.engines.base import RolloutEngine, SamplingSettings  # not the package: it imports modules.rollout
from lit_rlhf.engines.correction import engine_logprob_correction
from lit_rlhf.errors import ConfigError
from lit_rlhf.lora import LoraOptions
from lit_rlhf.models.loading import check_same_tokenizer
from lit_rlhf.models.sources import require_stage_output
from lit_rlhf.modules.base import FrozenDtype, StageModule
from lit_rlhf.modules.guards import check_finite
from lit_rlhf.modules.optim import adamw, warmup_constant_schedule
from lit_rlhf.modules.ppo_checks import check_ppo_options, scalar_model_sources
from lit_rlhf.modules.ptx import lm_loss, ptx_backward
from lit_rlhf.modules.rollout import (
    Rollout, accumulate, eval_mode, in_chunks, logprobs_and_entropy, response_logits, response_logprobs,
    response_values, rollout_metrics, select_rows,
)
from lit_rlhf.random_state import rng_states, seeded, set_rng_states
from lit_rlhf.rewards import Reward, RewardBatch, RewardModelScore


class PPOModule(StageModule):
    """Optimise an SFT policy against rewards with PPO, plus pretraining gradients (PPO-ptx); GRPO and RLOO by setting.

    Args:
        policy: The SFT model directory (``configs/sft.yaml`` writes it); trained, and the KL reference.
        reward_model: The reward model directory (``configs/rm.yaml``): read by the default reward and as the value
            model's initialisation. Needed only when one of them uses it.
        rewards: Reward components, summed with their weights (``lit_rlhf.rewards``: ``RewardModelScore``,
            ``FunctionReward``, ``lit_rlhf.sandbox.GoldReward``, or your own). Default: ``[RewardModelScore]``.
        value_model: Initialisation of the value model (critic). Default: ``reward_model`` (paper).
        engine: How responses are sampled (``lit_rlhf.engines``). Default: ``HFEngine`` (``generate`` on the policy).
        truncated_is_cap: Truncated importance sampling (Yao et al. 2025) for an engine whose log-probs are not the
            trainer's (``VLLMEngine``): each token's advantage x ``min(p_trainer / p_engine, cap)``. Unset: off.
        tokenizer: Tokenizer directory. Default: the policy's own.
        rollout_batch_size: Episodes per rollout per device (paper 512); a multiple of ``minibatch_size`` and
            ``samples_per_prompt``.
        samples_per_prompt: Responses sampled per prompt (1 for PPO; >= 2 for ``rloo``/``grpo``).
        minibatch_size: Episodes per optimizer step per device (paper 64).
        micro_batch_size: Episodes per forward pass: memory only, the step's gradient does not depend on it.
        ppo_epochs: Passes of updates over each rollout batch (paper 1).
        max_new_tokens: Longest response.
        temperature: Sampling temperature (paper 1); log-probs are taken at the same temperature; 0 = greedy.
        top_p: Nucleus sampling threshold (1 = the full distribution).
        generation_batch_size: Episodes per ``generate`` call. Default: the whole rollout at once.
        missing_eos_penalty: Subtracted from the score of responses that never reach EOS. Unset: none.
        advantage_estimator: ``gae`` (paper; a value model is trained), or critic-free ``rloo`` (leave-one-out
            baseline, Ahmadian et al. 2024) / ``grpo`` (group-standardised, Shao et al. 2024) from the other samples
            of the same prompt.
        kl_coef: KL coefficient beta (paper 0.02), or the starting beta when ``target_kl`` is set.
        kl_estimator: Per-token KL estimator: ``k1`` (paper, log-ratio), ``k2`` or ``k3``.
        kl_placement: ``reward``: ``-beta * KL_t`` in every token's reward (paper eq. 2); ``loss``: ``beta * KL_t``
            added to the policy loss with its gradient (as GRPO does; ``k3`` is the usual estimator there).
        target_kl: Per-sequence KL that an adaptive controller steers beta towards. Unset: beta stays fixed.
        kl_horizon: Episodes over which the adaptive controller makes a full correction.
        gamma: GAE discount (paper 1: none).
        lam: GAE lambda.
        whiten_advantages: Normalise advantages over each rollout batch. Default: on for ``gae``, off otherwise.
        clip_range: PPO ratio clip epsilon (paper 0.2).
        value_clip_range: How far one update may move a value prediction from its rollout value.
        value_loss_coef: Weight of the value loss.
        entropy_coef: Weight of an entropy bonus (subtracted from the policy loss); 0 = none.
        loss_aggregation: How a step's per-token losses are averaged: ``token_mean`` (every token of the step
            weighs the same), ``sequence_mean`` (each response's mean, then the responses'), or ``constant``
            (Dr. GRPO: token sum over ``responses x max_new_tokens``).
        learning_rate: Policy learning rate (constant after warm-up).
        value_learning_rate: Value-model learning rate. Default: ``learning_rate``.
        betas: Adam betas.
        weight_decay: AdamW weight decay.
        warmup_rollouts: Rollouts (PPO iterations) of linear LR warm-up (paper 10).
        warmup_start: Warm-up starts at this fraction of the LR (paper 0.1).
        max_grad_norm: Global gradient-norm clip over policy and value parameters. Unset: no clipping.
        ema_decay: Decay of the EMA of the policy's trained weights, used for validation and export (paper 0.992).
            Unset: no EMA.
        gamma_ptx: Weight of the pretraining next-token loss (paper 27.8); 0 is plain PPO.
        ptx_micro_batch_size: Pretraining sequences per forward pass. Default: ``micro_batch_size``.
        frozen_dtype: Load the reference and reward models in this dtype (e.g. ``bfloat16``) to save memory.
        gradient_checkpointing: Recompute activations of the trained models in the backward pass.
        lora: Train LoRA adapters on the policy and value model instead of all weights (``LoraOptions``). The KL
            reference is then the policy with its adapters disabled: no second copy of the SFT weights.
        seed: Seeds sampling (per rollout and rank) and minibatch order, so a resumed run repeats the same draws.
            Default: the run's ``seed_everything``.
        output_dir: Where the final policy (its EMA if enabled) is written as a Hugging Face directory.
    """

    export_attribute = "policy"
    frozen_models = ("reference_model", "rewards")

    def __init__(
        self, policy: str, reward_model: Optional[str] = None, rewards: Optional[list[Reward]] = None,
        value_model: Optional[str] = None, engine: Optional[RolloutEngine] = None, truncated_is_cap: Optional[float] = None,
        tokenizer: Optional[str] = None,
        rollout_batch_size: int = 512, samples_per_prompt: int = 1, minibatch_size: int = 64, micro_batch_size: int = 8,
        ppo_epochs: int = 1, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
        generation_batch_size: Optional[int] = None, missing_eos_penalty: Optional[float] = None,
        advantage_estimator: Literal["gae", "rloo", "grpo"] = "gae",
        kl_coef: float = 0.02, kl_estimator: Literal["k1", "k2", "k3"] = "k1", kl_placement: Literal["reward", "loss"] = "reward",
        target_kl: Optional[float] = None, kl_horizon: int = 10000, gamma: float = 1.0, lam: float = 0.95,
        whiten_advantages: Optional[bool] = None, clip_range: float = 0.2, value_clip_range: float = 0.2,
        value_loss_coef: float = 0.1, entropy_coef: float = 0.0, loss_aggregation: LossAggregation = "token_mean",
        learning_rate: float = 1e-5, value_learning_rate: Optional[float] = None, betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0, warmup_rollouts: int = 10, warmup_start: float = 0.1, max_grad_norm: Optional[float] = 1.0,
        ema_decay: Optional[float] = 0.992, gamma_ptx: float = 27.8, ptx_micro_batch_size: Optional[int] = None,
        frozen_dtype: FrozenDtype = None, gradient_checkpointing: bool = False,
        lora: Optional[LoraOptions] = None, seed: Optional[int] = None, output_dir: Optional[str] = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["rewards", "engine"])
        check_ppo_options(self.hparams)
        self.rewards = torch.nn.ModuleList(rewards if rewards is not None else [RewardModelScore()])
        from lit_rlhf.engines.hf import HFEngine  # here: engines.hf imports modules.rollout, which imports this module
        self.engine = engine or HFEngine()
        self.uses_critic = advantage_estimator == "gae"
        require_stage_output(policy, "policy", "configs/sft.yaml")
        scalar_sources = scalar_model_sources(self.hparams, self.rewards, self.uses_critic)
        self.init_stage(policy, tokenizer, lora, output_dir)
        for argument, source in scalar_sources.items():  # they read the policy's token ids as they are
            check_same_tokenizer(self.tokenizer, source, argument)
        self.seed = resolve_seed(seed)  # not in hparams: the data module's seed stays as configured
        self.automatic_optimization = False  # a rollout makes several optimizer steps
        self.prompts_per_rollout = rollout_batch_size // samples_per_prompt  # read by PromptDataModule
        self.kl_controller = AdaptiveKLController(kl_coef, target_kl, kl_horizon) if target_kl else FixedKLController(kl_coef)
        self.policy = self.reference_model = self.value_model = None
        self.rollouts_done = 0
        self.data_position: Optional[tuple[int, int]] = None  # (epoch, rollouts consumed in it); see PromptDataModule
        self.measure_ptx_grad_norm = False  # PretrainMixLogger switches it on; it costs a copy of the gradients
        self.last_rollout: Optional[Rollout] = None
        self.last_stats: dict[str, Tensor] = {}
        self.engine_metrics: dict[str, Tensor] = {}  # engine/*: engine-vs-trainer log-prob mismatch of the last rollout

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self.policy = self.load_trained(hp.policy, gradient_checkpointing=hp.gradient_checkpointing)
        self.reference_model = self.load_reference(hp.policy, hp.frozen_dtype)
        reward_models = [model for reward in self.rewards for model in reward.build(self)]
        if self.uses_critic:
            self.value_model = self.load_trained(hp.value_model or hp.reward_model, "scalar",
                                                 gradient_checkpointing=hp.gradient_checkpointing)
        self.shard([self.policy, self.reference_model, *reward_models, self.value_model])
        self.enable_ema(self.policy, hp.ema_decay)  # after sharding: the averages are sharded like the weights
        self.engine.setup(self)

    def configure_optimizers(self):
        """One AdamW with a parameter group per trained model, so ``global_step`` counts updates."""
        hp = self.hparams
        lrs = self.configured_learning_rates()
        groups = [{"params": list(self.policy.parameters()), "lr": lrs[0]}]
        if self.value_model is not None:
            groups.append({"params": list(self.value_model.parameters()), "lr": lrs[1]})
        optimizer = adamw(groups, hp.learning_rate, hp.betas, hp.weight_decay)
        scheduler = warmup_constant_schedule(optimizer, hp.warmup_rollouts, hp.warmup_start)  # stepped once per rollout
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def configured_learning_rates(self) -> list[Optional[float]]:
        hp = self.hparams
        return [hp.learning_rate] + ([hp.value_learning_rate or hp.learning_rate] if self.uses_critic else [])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        if hp.gamma_ptx > 0 and "ptx" not in batch:
            raise ConfigError(f"gamma_ptx={hp.gamma_ptx} needs pretraining data: set data.init_args.ptx (and ptx_ratio > 0), or gamma_ptx: 0 for plain PPO")
        where = f"rollout {self.rollouts_done} (global step {self.global_step})"
        rollout = self.make_rollout(batch["prompts"], where)
        generation_time, started = self._generation_time, time.perf_counter()
        with local_backward(self):  # DDP: gradients averaged once per optimizer step (sync_gradients)
            stats = self.ppo_update(rollout, batch.get("ptx") if hp.gamma_ptx > 0 else None, where)
        stats["perf/generation_tokens_per_sec"] = rollout.response_lengths.sum() / max(generation_time, 1e-9)
        stats["perf/training_tokens_per_sec"] = stats.pop("tokens") / max(time.perf_counter() - started, 1e-9)
        self.lr_schedulers().step()
        self.engine.sync_weights(self)  # the next rollout samples from the updated policy
        sequence_kl = masked_sum(rollout.kl, rollout.response_mask, dim=1)
        self.kl_controller.update(float(all_reduce_mean(sequence_kl.mean(), self)), n_steps=len(rollout))
        self.rollouts_done += 1
        self.data_position = (self.current_epoch, batch_idx + 1)
        self.last_rollout, self.last_stats = rollout, stats
        metrics = {**rollout_metrics(rollout), **self.engine_metrics, "rollout/beta": torch.tensor(self.kl_controller.beta)}
        metrics.update({k: v for k, v in stats.items() if not k.startswith("ptx/")})  # ptx/*: PretrainMixLogger
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rollout))
        self.log_dict({"score": metrics["rollout/score"], "kl": metrics["rollout/kl"]}, prog_bar=True, logger=False,
                      on_step=True, on_epoch=False, batch_size=len(rollout))

    @torch.no_grad()
    def make_rollout(self, prompts: dict[str, Any], where: str = "rollout") -> Rollout:
        """The experience phase: generate, score, and compute rewards and advantages."""
        hp = self.hparams
        started = time.perf_counter()
        with eval_mode(self.policy), seeded(self._rollout_seed(), self.device):
            rollout = self.generate_rollout(prompts, model=self.policy, num_samples=hp.samples_per_prompt)
        rollout.records = [record for record in prompts.get("records", []) for _ in range(hp.samples_per_prompt)]
        self._generation_time = time.perf_counter() - started
        with eval_mode(self.policy, self.value_model):
            if rollout.logprobs is None:  # not recorded during generation (see generate_rollout)
                rollout.logprobs, rollout.entropy = in_chunks(
                    rollout, hp.micro_batch_size, lambda chunk: logprobs_and_entropy(self.policy, chunk, hp.temperature))
            rollout.ref_logprobs = self.reference_logprobs(rollout)
            if self.value_model is not None:
                rollout.values = in_chunks(rollout, hp.micro_batch_size, lambda chunk: response_values(self.value_model, chunk))
        rollout.scores = self.score_responses(rollout)
        check_finite("the reward", rollout.scores, where)
        rollout.kl = kl_penalty(rollout.logprobs, rollout.ref_logprobs, hp.kl_estimator)
        rollout.rewards = self.compute_rewards(rollout)
        rollout.advantages, rollout.returns = self.estimate_advantages(rollout)
        self.engine_metrics = engine_logprob_correction(self.engine, rollout, hp.truncated_is_cap)
        return rollout

    def ppo_update(self, rollout: Rollout, ptx: Optional[dict[str, Tensor]], where: str = "update") -> dict[str, Tensor]:
        """The optimisation phase: ``ppo_epochs`` x minibatches, one optimizer step each, with its ptx batch.

        Each minibatch's losses are normalised by one number for the whole step, summed over its
        micro-batches and all-reduced over ranks before the first backward, so the step's gradient
        does not depend on ``micro_batch_size`` or on how episodes fall on ranks.
        """
        hp = self.hparams
        optimizer = self.optimizers()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps_per_epoch = math.ceil(len(rollout) / hp.minibatch_size)
        ptx_steps = [select_rows(ptx, r) for r in torch.arange(len(ptx["input_ids"])).tensor_split(steps_per_epoch)] if ptx else []
        generator = torch.Generator().manual_seed(self._rollout_seed())
        totals: dict[str, Tensor] = {}
        tokens = torch.zeros((), device=self.device)
        step_weight = 1 / (steps_per_epoch * hp.ppo_epochs)
        for _ in range(hp.ppo_epochs):
            order = torch.randperm(len(rollout), generator=generator).to(self.device)
            for step, minibatch in enumerate(order.split(hp.minibatch_size)):
                optimizer.zero_grad()
                micro_rows = minibatch.split(hp.micro_batch_size)
                local = sum(step_normalizer(rollout.response_mask[rows], hp.loss_aggregation, hp.max_new_tokens) for rows in micro_rows)
                normalizer = all_reduce_mean(local, self)  # gradients are averaged over ranks: the mean count per rank
                for rows in micro_rows:
                    micro = rollout.select(rows)
                    loss, stats = self.ppo_loss(micro, normalizer)
                    check_finite("the PPO loss", loss, where)
                    self.manual_backward(loss)
                    accumulate(totals, stats, step_weight)
                    tokens += micro.attention_mask.sum()
                if ptx_steps and len(ptx_steps[step]["input_ids"]):
                    ptx_stats = ptx_backward(self, ptx_steps[step], params, where, measure_grad_norms=self.measure_ptx_grad_norm)
                    tokens += ptx_stats.pop("tokens")
                    accumulate(totals, ptx_stats, step_weight)
                sync_gradients(self, params)
                norm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm or math.inf)
                check_finite("the gradient norm", norm, where)
                accumulate(totals, {"train/grad_norm": norm}, step_weight)
                optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.policy)
        totals["train/lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        totals["tokens"] = tokens
        return totals

    def ppo_loss(self, micro: Rollout, normalizer: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """This micro-batch's share of the step loss: policy loss plus ``value_loss_coef`` x value loss, each summed
        over the micro-batch and divided by the step's ``normalizer``; and its detached parts."""
        hp = self.hparams
        logits = response_logits(self.policy, micro, hp.temperature)
        logprobs = logprobs_from_logits(logits, micro.responses)
        entropy = entropy_from_logits(logits) if hp.entropy_coef else None  # from the same forward, with grad
        parts = {"policy": self.policy_loss(micro, logprobs, entropy)}
        if self.value_model is not None:
            parts["value"] = self.value_loss(micro, response_values(self.value_model, micro))
        mask, mode = micro.response_mask, hp.loss_aggregation
        loss, stats = 0.0, {}
        for name, part in parts.items():
            part_loss = aggregate_loss(part.per_token, mask, mode, normalizer)
            loss = loss + (hp.value_loss_coef * part_loss if name == "value" else part_loss)
            stats[f"train/{name}_loss"] = part_loss.detach()
            stats.update({f"train/{key}": aggregate_loss(value, mask, mode, normalizer) for key, value in part.metrics.items()})
        return loss, stats

    # ------------------------------------------------------------------------------------------
    # Hooks for custom objectives

    def generate_rollout(self, prompts: dict[str, Tensor], *, model, num_samples: int = 1) -> Rollout:
        """Hook: ``num_samples`` responses per prompt (adjacent rows) from ``model``, with log-probs and entropy
        recorded while sampling (an override may leave them None: :meth:`make_rollout` then scores them)."""
        hp = self.hparams
        settings = SamplingSettings(hp.max_new_tokens, hp.temperature, hp.top_p, self.tokenizer.eos_token_id,
                                    self.tokenizer.pad_token_id, hp.generation_batch_size)
        return self.engine.generate(self, model, prompts, num_samples, settings)

    def reference_logprobs(self, rollout: Rollout) -> Tensor:
        """Hook: ``[B, R]`` log-probs of the responses under the KL reference (the frozen SFT model)."""
        hp = self.hparams
        with self.reference_view(self.reference_model, self.policy) as reference:
            return in_chunks(rollout, hp.micro_batch_size, lambda c: response_logprobs(reference, c, hp.temperature))

    def score_responses(self, rollout: Rollout) -> Tensor:
        """Hook: ``[B]`` sequence scores: the weighted sum of the reward components (each kept on
        ``rollout.component_scores``), minus ``missing_eos_penalty`` for responses without EOS."""
        batch = RewardBatch(rollout.input_ids, rollout.attention_mask, rollout.prompt_length, rollout.response_mask,
                            rollout.ended, rollout.records, self.tokenizer)
        rollout.component_scores = {reward.name: reward.score(batch) for reward in self.rewards}
        scores = sum(reward.weight * rollout.component_scores[reward.name] for reward in self.rewards)
        if self.hparams.missing_eos_penalty is not None:
            scores = scores - self.hparams.missing_eos_penalty * (~rollout.ended).to(scores.dtype)
        return scores

    def compute_rewards(self, rollout: Rollout) -> Tensor:
        """Hook: ``[B, R]`` per-token rewards: the score on the last token, and ``-beta * KL_t`` on every token when
        the KL is part of the reward (eq. 2)."""
        beta = self.kl_controller.beta if self.hparams.kl_placement == "reward" else 0.0
        return per_token_rewards(rollout.scores, rollout.kl, rollout.response_mask, beta)

    def estimate_advantages(self, rollout: Rollout) -> tuple[Tensor, Optional[Tensor]]:
        """Hook: ``(advantages [B, R], returns [B, R] or None)``: GAE with the critic, or each response's summed
        reward against the other samples of its prompt (``rloo``/``grpo``) on every token; whitened if set."""
        hp, mask = self.hparams, rollout.response_mask
        if self.uses_critic:
            advantages, returns = gae_advantages(rollout.rewards, rollout.values, mask, hp.gamma, hp.lam)
        else:
            group_baseline = rloo_advantages if hp.advantage_estimator == "rloo" else grpo_advantages
            per_response = group_baseline(masked_sum(rollout.rewards, mask, dim=1), hp.samples_per_prompt)
            advantages = torch.where(mask, per_response[:, None].expand_as(rollout.rewards), 0.0)
            returns = None
        if self.uses_critic if hp.whiten_advantages is None else hp.whiten_advantages:
            # Over the whole rollout batch, all ranks: the same advantages however episodes fall on ranks.
            advantages = whiten(advantages, mask, moments=global_masked_moments(advantages, mask, self))
        return advantages, returns

    def policy_loss(self, micro: Rollout, logprobs: Tensor, entropy: Optional[Tensor]) -> TokenLoss:
        """Hook: the per-token policy loss of a micro-batch from the current ``logprobs`` and ``entropy`` (both from
        one forward, with grad; ``entropy`` is None when ``entropy_coef`` is 0). ``micro`` holds the rollout's
        old and reference log-probs, advantages and mask. Default: the clipped surrogate, plus ``beta * KL_t``
        with ``kl_placement: loss``, minus ``entropy_coef * entropy``."""
        hp = self.hparams
        loss = clipped_policy_loss(logprobs, micro.logprobs, micro.advantages, hp.clip_range)
        per_token, metrics = loss.per_token, dict(loss.metrics)
        if hp.kl_placement == "loss":
            kl = kl_penalty(logprobs, micro.ref_logprobs, hp.kl_estimator)
            per_token = per_token + self.kl_controller.beta * kl
            metrics["kl_loss"] = kl.detach()
        if entropy is not None:
            per_token = per_token - hp.entropy_coef * entropy
            metrics["entropy"] = entropy.detach()
        return TokenLoss(per_token, metrics)

    def value_loss(self, micro: Rollout, values: Tensor) -> TokenLoss:
        """Hook: the per-token value loss of a micro-batch from the current ``values`` (with grad). Default: clipped."""
        return clipped_value_loss(values, micro.values, micro.returns, self.hparams.value_clip_range)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out pretraining loss on text batches; score and KL of the evaluated (EMA) policy's samples on prompt batches."""
        hp, size = self.hparams, len(batch["input_ids"])
        with self.evaluation_weights() as model:
            if "labels" in batch:
                loss, n_tokens = lm_loss(model, batch)
                self.log("val/pretrain_loss", loss, batch_size=int(n_tokens), add_dataloader_idx=False, sync_dist=True)
                return
            with seeded(self.seed + batch_idx, self.device):
                rollout = self.generate_rollout(batch, model=model, num_samples=1)
            rollout.records = list(batch.get("records", []))
            if rollout.logprobs is None:
                rollout.logprobs = in_chunks(rollout, hp.micro_batch_size, lambda c: response_logprobs(model, c, hp.temperature))
            rollout.ref_logprobs = self.reference_logprobs(rollout)
        rollout.scores = self.score_responses(rollout)
        rollout.kl = kl_penalty(rollout.logprobs, rollout.ref_logprobs, hp.kl_estimator)
        metrics = {k.replace("rollout/", "val/"): v for k, v in rollout_metrics(rollout).items() if k.startswith("rollout/")}
        self.log_dict(metrics, batch_size=size, add_dataloader_idx=False, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ppo"] = {"kl_controller": self.kl_controller.state_dict(), "rollouts_done": self.rollouts_done,
                             "data_position": self.data_position, "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ppo")
        if state:
            saved_coef = checkpoint.get("hyper_parameters", {}).get("kl_coef", self.hparams.kl_coef)
            if saved_coef == self.hparams.kl_coef:
                self.kl_controller.load_state_dict(state["kl_controller"])
            else:  # the config changed beta on purpose (e.g. to pull a diverging run back): it applies
                rank_zero_info(f"resumed with kl_coef {self.hparams.kl_coef:g} (the checkpoint's was {saved_coef:g}); the new value applies")
            self.rollouts_done, self.data_position = state["rollouts_done"], state["data_position"]
            set_rng_states(state["rng"])

    def _rollout_seed(self) -> int:
        return ((self.seed * 1_000_003 + self.rollouts_done) * 1_009 + self.global_rank) % (2**63)
