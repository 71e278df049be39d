"""Stage 3 — PPO-ptx (InstructGPT 3.5 eq. 2, C.4) and its critic-free relatives (GRPO, RLOO), one rollout per step:
**generate** with the engine; **score** (reference log-probs, values, reward components); per-token **rewards**
(``-beta * KL_t`` plus the score) and **advantages** (GAE, or the prompt's other samples); **update**
(:mod:`~lit_rlhf.modules.ppo_update`). Each phase returns a new :class:`~lit_rlhf.episodes.Episodes`; callbacks get
a :class:`~lit_rlhf.episodes.RolloutSummary` as ``outputs["rollout"]``. Hooks: :meth:`generate_rollout`,
:meth:`reference_logprobs`, :meth:`score_responses`, :meth:`compute_rewards`, :meth:`estimate_advantages`,
:meth:`policy_loss`, :meth:`value_loss`. Batch vocabulary: :mod:`lit_rlhf.modules.rollout`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_rlhf.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    TokenLoss,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    grpo_advantages,
    kl_penalty,
    masked_sum,
    per_token_rewards,
    rloo_advantages,
    whiten,
)
from lit_rlhf.data.common import resolve_seed
from lit_rlhf.distributed.collectives import all_reduce_mean, global_masked_moments, local_backward
from lit_rlhf.engines import HFEngine, RolloutEngine
from lit_rlhf.engines.async_rollouts import AsyncRollouts, staleness_metrics, with_policy_version
from lit_rlhf.engines.correction import engine_logprob_correction
from lit_rlhf.episodes import Episodes, RolloutSummary
from lit_rlhf.errors import check_option
from lit_rlhf.lora import LoraOptions
from lit_rlhf.models.loading import check_same_tokenizer
from lit_rlhf.models.sources import require_stage_output
from lit_rlhf.modules.base import FrozenDtype, StageModule
from lit_rlhf.modules.optim import adamw, lr_schedule
from lit_rlhf.modules.ppo_settings import (
    PPO_OPTIMIZER,
    AdvantageSettings,
    KLSettings,
    OptimizerSettings,
    PolicyLossSettings,
    PtxSettings,
    RolloutBatchSettings,
    RolloutCorrectionSettings,
    SamplingSettings,
    ValueSettings,
    ppo_groups,
    scalar_model_sources,
)
from lit_rlhf.modules.ppo_update import PPOUpdate
from lit_rlhf.modules.ptx import lm_loss
from lit_rlhf.modules.rollout import (
    eval_mode,
    in_chunks,
    logprobs_and_entropy,
    response_logprobs,
    response_values,
    rollout_metrics,
)
from lit_rlhf.random_state import rng_states, seeded, set_rng_states
from lit_rlhf.reliability.guards import check_finite
from lit_rlhf.rewards import Reward, RewardContext, RewardModelScore


class PPOModule(PPOUpdate, StageModule):
    """Optimise an SFT policy against rewards with PPO, plus pretraining gradients (PPO-ptx); GRPO and RLOO by setting.

    Args:
        policy: The SFT model directory (``configs/sft.yaml`` writes it); trained, and the KL reference.
        reward_model: The reward model directory (``configs/rm.yaml``): read by the default reward and as the value
            model's initialisation. Needed only when one of them uses it.
        rewards: Reward components, summed with their weights (``lit_rlhf.rewards``: ``RewardModelScore``,
            ``FunctionReward``, ``lit_rlhf.sandbox.GoldReward``, or your own). Default: ``[RewardModelScore]``.
        engine: How responses are sampled (``lit_rlhf.engines``). Default: ``HFEngine`` (``generate`` on the policy);
            ``HFWorkerEngine`` or ``VLLMEngine`` for ``batch.max_staleness: 1``.
        tokenizer: Tokenizer directory. Default: the policy's own.
        batch: Rollout, minibatch and micro-batch sizes, samples per prompt, PPO epochs.
        sampling: Response length, temperature, top-p, generation batch, missing-EOS penalty.
        kl: The KL penalty to the reference: beta, estimator, placement (reward or loss), adaptive target.
        advantage: ``gae`` (paper; trains a value model), ``rloo`` or ``grpo``; gamma, lambda, whitening.
        loss: The policy loss: clip range, entropy bonus, token aggregation, gradient-norm clip.
        value: The value model: initialisation (default ``reward_model``), learning rate, loss weight, clip range.
        optimizer: AdamW and its schedule; the paper's PPO default: 10 rollouts of warm-up from 1/10, then constant.
        ptx: The pretraining mix: gamma_ptx (paper 27.8), micro-batch size, ptx/PPO gradient-norm measurements.
        correction: Off-policy correction (truncated IS) for an engine whose log-probs are not the trainer's.
        ema_decay: Decay of the EMA of the policy's trained weights, used for validation and export (paper 0.992).
            Unset: no EMA.
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
        self,
        policy: str,
        reward_model: Optional[str] = None,
        rewards: Optional[list[Reward]] = None,
        engine: Optional[RolloutEngine] = None,
        tokenizer: Optional[str] = None,
        batch: RolloutBatchSettings = RolloutBatchSettings(),
        sampling: SamplingSettings = SamplingSettings(),
        kl: KLSettings = KLSettings(),
        advantage: AdvantageSettings = AdvantageSettings(),
        loss: PolicyLossSettings = PolicyLossSettings(),
        value: ValueSettings = ValueSettings(),
        optimizer: OptimizerSettings = PPO_OPTIMIZER,
        ptx: PtxSettings = PtxSettings(),
        correction: RolloutCorrectionSettings = RolloutCorrectionSettings(),
        ema_decay: Optional[float] = 0.992,
        frozen_dtype: FrozenDtype = None,
        gradient_checkpointing: bool = False,
        lora: Optional[LoraOptions] = None,
        seed: Optional[int] = None,
        output_dir: Optional[str] = None,
    ):
        super().__init__()
        groups = ppo_groups(
            batch=batch,
            sampling=sampling,
            kl=kl,
            advantage=advantage,
            loss=loss,
            value=value,
            optimizer=optimizer,
            ptx=ptx,
            correction=correction,
        )
        for name, settings in groups.items():  # typed groups, read from here
            setattr(self, name, settings)
        check_option("ema_decay", ema_decay, min=0, max=1, max_open=True)
        self.save_settings_and_hyperparameters(ignore=("rewards", "engine"), **groups)
        self.rewards = torch.nn.ModuleList(rewards if rewards is not None else [RewardModelScore()])
        self.engine = engine or HFEngine()
        # batch.max_staleness 1: the next rollout is sampled in the background (lit_rlhf.engines.async_rollouts).
        self.rollouts_ahead = AsyncRollouts(self.engine) if self.batch.max_staleness else None
        self.uses_critic = self.advantage.uses_critic
        require_stage_output(policy, "policy", "configs/sft.yaml")
        scalar_sources = scalar_model_sources(reward_model, self.value, self.rewards, self.uses_critic)
        self.init_stage(policy, tokenizer, lora, output_dir)
        for argument, source in scalar_sources.items():  # they read the policy's token ids as they are
            check_same_tokenizer(self.tokenizer, source, argument)
        self.seed = resolve_seed(seed)  # not in hparams: the data module's seed stays as configured
        self.automatic_optimization = False  # a rollout makes several optimizer steps
        self.kl_controller = (
            AdaptiveKLController(self.kl.coef, self.kl.target, self.kl.horizon)
            if self.kl.target
            else FixedKLController(self.kl.coef)
        )
        self.policy = self.reference_model = self.value_model = None
        self.rollouts_done = 0

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self.policy = self.load_trained(hp.policy, gradient_checkpointing=hp.gradient_checkpointing)
        self.reference_model = self.load_reference(hp.policy, hp.frozen_dtype)
        context = RewardContext(self.tokenizer, hp.reward_model, hp.frozen_dtype, self.batch.micro_batch_size)
        reward_models = [model for reward in self.rewards for model in reward.build(context)]
        if self.uses_critic:
            self.value_model = self.load_trained(
                self.value.model or hp.reward_model, "scalar", gradient_checkpointing=hp.gradient_checkpointing
            )
        self.shard([self.policy, self.reference_model, *reward_models, self.value_model])
        self.enable_ema(self.policy, hp.ema_decay)  # after sharding: the averages are sharded like the weights
        self.engine.setup(self.policy, hp.policy)

    def configure_optimizers(self):
        """One AdamW with a parameter group per trained model, so ``global_step`` counts updates."""
        lrs = self.configured_learning_rates()
        groups = [{"params": list(self.policy.parameters()), "lr": lrs[0]}]
        if self.value_model is not None:
            groups.append({"params": list(self.value_model.parameters()), "lr": lrs[1]})
        optimizer = adamw(groups, self.optimizer.learning_rate, self.optimizer.betas, self.optimizer.weight_decay)
        scheduler = lr_schedule(optimizer, self.optimizer, math.inf)  # stepped once per rollout
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def configured_learning_rates(self) -> list[Optional[float]]:
        lr = self.optimizer.learning_rate
        return [lr] + ([self.value.learning_rate or lr] if self.uses_critic else [])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, RolloutSummary]:
        self.ptx.require_data("ptx" in batch)
        where = f"rollout {self.rollouts_done} (global step {self.global_step})"
        every = self.ptx.measure_grad_norm_every
        measure = every > 0 and self.rollouts_done % every == 0
        episodes, metrics = self.make_rollout(batch["prompts"], where)
        started = time.perf_counter()
        with local_backward(self):  # DDP: gradients averaged once per optimizer step (sync_gradients)
            stats = self.ppo_update(
                episodes, batch.get("ptx") if self.ptx.gamma > 0 else None, where, measure_grad_norms=measure
            )
        stats["perf/training_tokens_per_sec"] = stats.pop("tokens") / max(time.perf_counter() - started, 1e-9)
        self.lr_schedulers().step()
        if self.rollouts_ahead is not None:
            self.rollouts_ahead.wait()  # sampled with the weights before this update: the sync must not overtake it
        self.engine.sync_weights(self.policy)  # the next rollout samples from the updated policy
        sequence_kl = masked_sum(episodes.kl, episodes.response_mask, dim=1)
        self.kl_controller.update(float(all_reduce_mean(sequence_kl.mean(), self)), n_steps=len(episodes))
        self.rollouts_done += 1
        metrics = {**rollout_metrics(episodes), **metrics, "rollout/beta": torch.tensor(self.kl_controller.beta)}
        metrics.update(staleness_metrics(episodes, self.rollouts_done - 1))
        metrics.update({k: v for k, v in stats.items() if not k.startswith("ptx/")})  # ptx/*: PretrainMixLogger
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(episodes))
        progress = {"score": metrics["rollout/score"], "kl": metrics["rollout/kl"]}
        self.log_dict(progress, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=len(episodes))
        return {"rollout": RolloutSummary(self.rollouts_done, episodes, stats, metrics, self.ptx.gamma, measure)}

    @torch.no_grad()
    def make_rollout(self, prompts: dict[str, Any], where: str = "rollout") -> tuple[Episodes, dict[str, Tensor]]:
        """The experience phase: generate, score, and compute rewards and advantages. Returns the episodes and the
        phase's metrics (``perf/generation_tokens_per_sec``, ``engine/*``)."""
        episodes, seconds = self.sample_episodes(prompts)
        generated = episodes.response_lengths.sum() / max(seconds, 1e-9)
        with eval_mode(self.policy, self.value_model):
            episodes = self.score_episodes(episodes, prompts, self.policy, self.batch.samples_per_prompt, values=True)
        check_finite("the reward", episodes.scores, where)
        episodes = episodes.with_values(rewards=self.compute_rewards(episodes))
        correction = engine_logprob_correction(episodes, self.correction)
        advantages, returns = self.estimate_advantages(episodes)
        if correction.weights is not None:  # truncated IS: each token's advantage x its weight
            advantages = advantages * correction.weights.to(advantages.dtype)
        metrics = {"perf/generation_tokens_per_sec": generated, **correction.metrics}
        return episodes.with_values(advantages=advantages, returns=returns), metrics

    def sample_episodes(self, prompts: dict[str, Any]) -> tuple[Episodes, float]:
        """The rollout's responses, stamped with the policy version that sampled them, and the seconds sampling took:
        generated now, or with ``batch.max_staleness: 1`` sampled during the previous step (generated now when none
        was: the first rollout of a run or epoch), the next prompts (``prompts["next"]``) then submitted to the engine
        in the background."""
        n, version = self.batch.samples_per_prompt, self.rollouts_done
        if self.rollouts_ahead is None:
            started = time.perf_counter()
            with eval_mode(self.policy), seeded(self._rollout_seed(), self.device):
                episodes = self.generate_rollout(prompts, model=self.policy, num_samples=n)
            return with_policy_version(episodes, version), time.perf_counter() - started
        return self.rollouts_ahead.step(prompts, n, version, self._engine_sampler, self.policy)

    def _engine_sampler(self, prompts: dict[str, Any], rollout_index: int):
        """A call sampling rollout ``rollout_index``'s responses with the engine's own weights, from its own seed."""
        eos, pad, n = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, self.batch.samples_per_prompt
        seed = self._rollout_seed(rollout_index)
        return lambda: self.engine.generate(
            self.policy, prompts, n, self.sampling, eos_token_id=eos, pad_token_id=pad, seed=seed
        )

    def score_episodes(
        self, episodes: Episodes, prompts: dict[str, Any], model, samples_per_prompt: int, values: bool = False
    ) -> Episodes:
        """The episodes with their prompt records, ``model``'s log-probs (unless recorded while sampling), reference
        log-probs, ``values`` (with a critic), reward components, scores and per-token KL."""
        records = [record for record in prompts.get("records", []) for _ in range(samples_per_prompt)]
        episodes = episodes.with_values(records=records, tokenizer=self.tokenizer)
        micro, temperature = self.batch.micro_batch_size, self.sampling.temperature
        if episodes.logprobs is None:  # not recorded during generation (see generate_rollout)
            logprobs, entropy = in_chunks(episodes, micro, lambda c: logprobs_and_entropy(model, c, temperature))
            episodes = episodes.with_values(logprobs=logprobs, entropy=entropy)
        episodes = episodes.with_values(ref_logprobs=self.reference_logprobs(episodes))
        if values and self.value_model is not None:
            critic = self.value_model
            episodes = episodes.with_values(values=in_chunks(episodes, micro, lambda c: response_values(critic, c)))
        components = {reward.name: reward.score(episodes) for reward in self.rewards}
        episodes = episodes.with_values(component_scores=components)
        episodes = episodes.with_values(scores=self.score_responses(episodes))
        return episodes.with_values(kl=kl_penalty(episodes.logprobs, episodes.ref_logprobs, self.kl.estimator))

    # ------------------------------------------------------------------------------------------
    # Hooks for custom objectives

    def generate_rollout(self, prompts: dict[str, Tensor], *, model, num_samples: int = 1) -> Episodes:
        """Hook: ``num_samples`` responses per prompt (adjacent rows) from ``model``, with log-probs and entropy
        recorded while sampling (an override may leave them None: :meth:`make_rollout` then scores them). With
        ``batch.max_staleness: 1`` training rollouts call the engine directly instead (seeded, in the background)."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        return self.engine.generate(
            model, prompts, num_samples, self.sampling, eos_token_id=eos, pad_token_id=pad, training=self.training
        )

    def reference_logprobs(self, episodes: Episodes) -> Tensor:
        """Hook: ``[B, R]`` log-probs of the responses under the KL reference (the frozen SFT model)."""
        micro, temperature = self.batch.micro_batch_size, self.sampling.temperature
        with self.reference_view(self.reference_model, self.policy) as reference:
            return in_chunks(episodes, micro, lambda c: response_logprobs(reference, c, temperature))

    def score_responses(self, episodes: Episodes) -> Tensor:
        """Hook: ``[B]`` sequence scores: the weighted sum of the reward components (``episodes.component_scores``),
        minus ``sampling.missing_eos_penalty`` for responses without EOS."""
        scores = sum(reward.weight * episodes.component_scores[reward.name] for reward in self.rewards)
        if self.sampling.missing_eos_penalty is not None:
            scores = scores - self.sampling.missing_eos_penalty * (~episodes.ended).to(scores.dtype)
        return scores

    def compute_rewards(self, episodes: Episodes) -> Tensor:
        """Hook: ``[B, R]`` per-token rewards: the score on the last token, and ``-beta * KL_t`` on every token when
        the KL is part of the reward (eq. 2)."""
        beta = self.kl_controller.beta if self.kl.placement == "reward" else 0.0
        return per_token_rewards(episodes.scores, episodes.kl, episodes.response_mask, beta)

    def estimate_advantages(self, episodes: Episodes) -> tuple[Tensor, Optional[Tensor]]:
        """Hook: ``(advantages [B, R], returns [B, R] or None)``: GAE with the critic, or each response's summed
        reward against the other samples of its prompt (``rloo``/``grpo``) on every token; whitened if set."""
        adv, mask = self.advantage, episodes.response_mask
        if self.uses_critic:
            advantages, returns = gae_advantages(episodes.rewards, episodes.values, mask, adv.gamma, adv.lam)
        else:
            group_baseline = rloo_advantages if adv.estimator == "rloo" else grpo_advantages
            per_response = group_baseline(masked_sum(episodes.rewards, mask, dim=1), self.batch.samples_per_prompt)
            advantages, returns = torch.where(mask, per_response[:, None].expand_as(episodes.rewards), 0.0), None
        if self.uses_critic if adv.whiten is None else adv.whiten:
            # Over the whole rollout batch, all ranks: the same advantages however episodes fall on ranks.
            advantages = whiten(advantages, mask, moments=global_masked_moments(advantages, mask, self))
        return advantages, returns

    def policy_loss(self, micro: Episodes, logprobs: Tensor, entropy: Optional[Tensor]) -> TokenLoss:
        """Hook: the per-token policy loss of a micro-batch from the current ``logprobs`` and ``entropy`` (both from
        one forward, with grad; ``entropy`` is None when ``loss.entropy_coef`` is 0). ``micro`` holds the rollout's
        old and reference log-probs, advantages and mask. Default: the clipped surrogate, plus ``beta * KL_t``
        with ``kl.placement: loss``, minus ``loss.entropy_coef * entropy``."""
        loss = clipped_policy_loss(logprobs, micro.logprobs, micro.advantages, self.loss.clip_range)
        per_token, metrics = loss.per_token, dict(loss.metrics)
        if self.kl.placement == "loss":
            kl = kl_penalty(logprobs, micro.ref_logprobs, self.kl.estimator)
            per_token = per_token + self.kl_controller.beta * kl
            metrics["kl_loss"] = kl.detach()
        if entropy is not None:
            per_token = per_token - self.loss.entropy_coef * entropy
            metrics["entropy"] = entropy.detach()
        return TokenLoss(per_token, metrics)

    def value_loss(self, micro: Episodes, values: Tensor) -> TokenLoss:
        """Hook: the per-token value loss of a micro-batch from the current ``values`` (with grad). Default: clipped."""
        return clipped_value_loss(values, micro.values, micro.returns, self.value.clip_range)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out pretraining loss on text batches; score and KL of the evaluated (EMA) policy's samples."""
        with self.evaluation_weights() as model:
            if "labels" in batch:
                loss, n_tokens = lm_loss(model, batch)
                self.log("val/pretrain_loss", loss, batch_size=int(n_tokens), add_dataloader_idx=False, sync_dist=True)
                return
            with seeded(self.seed + batch_idx, self.device):
                episodes = self.generate_rollout(batch, model=model, num_samples=1)
            episodes = self.score_episodes(episodes, batch, model, 1)
        metrics = {
            k.replace("rollout/", "val/"): v for k, v in rollout_metrics(episodes).items() if k.startswith("rollout/")
        }
        self.log_dict(metrics, batch_size=len(batch["input_ids"]), add_dataloader_idx=False, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ppo"] = {
            "kl_controller": self.kl_controller.state_dict(),
            "rollouts_done": self.rollouts_done,
            "rng": rng_states(),
        }
        if self.rollouts_ahead is not None:  # the batch sampled ahead: its weights are gone after the update
            checkpoint["ppo"]["rollout_ahead"] = self.rollouts_ahead.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ppo")
        if state:
            saved_coef = checkpoint.get("hyper_parameters", {}).get("kl", {}).get("coef", self.kl.coef)
            if saved_coef == self.kl.coef:
                self.kl_controller.load_state_dict(state["kl_controller"])
            else:  # the config changed beta on purpose (e.g. to pull a diverging run back): it applies
                rank_zero_info(
                    f"resumed with kl.coef {self.kl.coef:g} (the checkpoint's was {saved_coef:g}); "
                    "the new value applies"
                )
            self.rollouts_done = state["rollouts_done"]
            set_rng_states(state["rng"])
            if self.rollouts_ahead is not None:
                self.rollouts_ahead.load_state_dict(state.get("rollout_ahead", {}))

    def _rollout_seed(self, rollout_index: Optional[int] = None) -> int:
        """The sampling seed of rollout ``rollout_index`` (default: the current one) on this rank."""
        index = self.rollouts_done if rollout_index is None else rollout_index
        return ((self.seed * 1_000_003 + index) * 1_009 + self.global_rank) % (2**63)
