"""Stage 3 — PPO-ptx (InstructGPT section 3.5 eq. 2, appendix C.4).

One ``training_step`` is one PPO iteration on one rollout batch (batch vocabulary:
:mod:`lit_rlhf.modules.rollout`):

1. **generate**: sample ``samples_per_prompt`` responses per prompt with the policy (KV cache,
   eval mode, temperature / top-p, stop at EOS);
2. **score**: log-probs under the policy and the frozen SFT reference, per-token values, and the
   reward model's centred score at the last response token;
3. **rewards**: ``-beta * KL_t`` on every response token plus the score on the last; GAE
   advantages (gamma, lambda), whitened;
4. **update**: ``ppo_epochs`` x minibatches, each ONE optimizer step whose gradients are the
   clipped policy surrogate plus ``value_loss_coef`` x the clipped value loss (accumulated over
   micro-batches), plus ``gamma_ptx`` x the next-token loss on that step's pretraining batch.

Subclass hooks, each small and documented below: :meth:`generate_rollout`,
:meth:`reference_logprobs`, :meth:`score_responses`, :meth:`compute_rewards`,
:meth:`estimate_advantages`, :meth:`policy_loss`, :meth:`value_loss`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor

from lit_rlhf.algorithms import (
    AdaptiveKLController, FixedKLController, PolicyLossOutput, ValueLossOutput, clipped_policy_loss, clipped_value_loss,
    ema_update, gae_advantages, kl_penalty, logprobs_from_logits, masked_sum, per_token_rewards, whiten,
)
from lit_rlhf.algorithms.lm import IGNORE_INDEX, next_token_loss
from lit_rlhf.distributed import all_reduce_mean, export_hf, generate_rollout, local_backward, shard_models, sync_gradients
from lit_rlhf.data.common import resolve_seed
from lit_rlhf.errors import ConfigError
from lit_rlhf.lora import LoraOptions, adapters_disabled, apply_lora
from lit_rlhf.models import (
    default_tokenizer_source, load_causal_lm, load_scalar_model, load_tokenizer, reward_bias, scalar_head_name, sequence_rewards,
)
from lit_rlhf.modules.optim import adamw, warmup_constant_schedule
from lit_rlhf.modules.rollout import (
    Rollout, SampledTokenLogprobs, accumulate, check_finite, check_same_tokenizer, concat_responses, eval_mode, grad_norm, in_chunks,
    logprobs_and_entropy, pad_columns, require_stage_output, response_logits, response_logprobs, response_values,
    rng_states, rollout_metrics, seeded, select_rows, set_rng_states,
)

#: Frozen models: never trained, never in a checkpoint (rebuilt from their directories on resume).
FROZEN_MODELS = ("reference_model", "reward_model")


class PPOModule(LightningModule):
    """Optimise an SFT policy against a reward model with PPO, plus pretraining gradients (PPO-ptx).

    Args:
        policy: The SFT model directory (``lit-rlhf fit --config configs/sft.yaml`` writes it); trained, and
            its frozen copy is the KL reference.
        reward_model: The reward model directory (``configs/rm.yaml``); frozen, scores include its centering bias.
        value_model: Initialisation of the value model (a separate, trained scalar model). Default: ``reward_model``
            (paper).
        tokenizer: Tokenizer directory. Default: the policy's own.
        rollout_batch_size: Episodes per rollout per device (paper 512). Must be divisible by ``minibatch_size``
            and ``samples_per_prompt``.
        samples_per_prompt: Responses sampled per prompt (1 for PPO; >= 2 for group baselines).
        minibatch_size: Episodes per optimizer step (paper 64).
        micro_batch_size: Episodes per forward pass; micro-batches accumulate into their minibatch's step.
        ppo_epochs: Passes of updates over each rollout batch (paper 1).
        max_new_tokens: Longest response.
        temperature: Sampling temperature (paper 1); log-probs are taken at the same temperature; 0 = greedy.
        top_p: Nucleus sampling threshold (1 = the full distribution).
        generation_batch_size: Prompts per ``generate`` call. Default: the whole rollout at once.
        missing_eos_penalty: Subtracted from the score of responses that never reach EOS. Unset: no penalty.
        kl_coef: KL coefficient beta (paper 0.02), or the starting beta when ``target_kl`` is set.
        kl_estimator: Per-token KL estimator in the reward: ``k1`` (paper, log-ratio), ``k2`` or ``k3``.
        target_kl: Per-sequence KL that an adaptive controller steers beta towards. Unset: beta stays fixed.
        kl_horizon: Episodes over which the adaptive controller makes a full correction.
        gamma: GAE discount (paper 1: none).
        lam: GAE lambda.
        whiten_advantages: Normalise advantages to zero mean, unit variance over each rollout batch.
        clip_range: PPO ratio clip epsilon (paper 0.2).
        value_clip_range: How far one update may move a value prediction from its rollout value.
        value_loss_coef: Weight of the value loss in the summed loss.
        learning_rate: Policy learning rate (constant after warm-up).
        value_learning_rate: Value-model learning rate. Default: ``learning_rate``.
        betas: Adam betas.
        weight_decay: AdamW weight decay.
        warmup_rollouts: Rollouts (PPO iterations) of linear LR warm-up (paper 10).
        warmup_start: Warm-up starts at this fraction of the LR (paper 0.1).
        max_grad_norm: Global gradient-norm clip over policy and value parameters. Unset: no clipping.
        ema_decay: Decay of the EMA of policy weights used for validation and export (paper 0.992). Unset: no EMA.
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

    #: Subclasses without a critic (group baselines) set this to False: no value model is built.
    uses_value_model: bool = True

    def __init__(
        self, policy: str, reward_model: str, value_model: Optional[str] = None, tokenizer: Optional[str] = None,
        rollout_batch_size: int = 512, samples_per_prompt: int = 1, minibatch_size: int = 64, micro_batch_size: int = 8,
        ppo_epochs: int = 1, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
        generation_batch_size: Optional[int] = None, missing_eos_penalty: Optional[float] = None,
        kl_coef: float = 0.02, kl_estimator: Literal["k1", "k2", "k3"] = "k1", target_kl: Optional[float] = None,
        kl_horizon: int = 10000, gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True,
        clip_range: float = 0.2, value_clip_range: float = 0.2, value_loss_coef: float = 0.1,
        learning_rate: float = 1e-5, value_learning_rate: Optional[float] = None, betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0, warmup_rollouts: int = 10, warmup_start: float = 0.1, max_grad_norm: Optional[float] = 1.0,
        ema_decay: Optional[float] = 0.992, gamma_ptx: float = 27.8, ptx_micro_batch_size: Optional[int] = None,
        frozen_dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None, gradient_checkpointing: bool = False,
        lora: Optional[LoraOptions] = None, seed: Optional[int] = None, output_dir: Optional[str] = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.hparams.seed = resolve_seed(seed)
        for name, divisor in (("minibatch_size", minibatch_size), ("samples_per_prompt", samples_per_prompt)):
            if divisor < 1 or rollout_batch_size % divisor:
                raise ConfigError(f"rollout_batch_size={rollout_batch_size} must be a positive multiple of {name}={divisor}")
        if self.uses_value_model:
            require_stage_output(value_model or reward_model, "value_model", "configs/rm.yaml")
        require_stage_output(policy, "policy", "configs/sft.yaml")
        require_stage_output(reward_model, "reward_model", "configs/rm.yaml")
        self.tokenizer = load_tokenizer(default_tokenizer_source(policy, tokenizer))
        for argument, source in (("reward_model", reward_model), ("value_model", value_model)):
            if source:
                check_same_tokenizer(self.tokenizer, source, argument)
        self.automatic_optimization = False  # a rollout makes several optimizer steps
        self.prompts_per_rollout = rollout_batch_size // samples_per_prompt  # read by PromptDataModule
        self.kl_controller = AdaptiveKLController(kl_coef, target_kl, kl_horizon) if target_kl else FixedKLController(kl_coef)
        self.policy = self.reference_model = self.reward_model = self.value_model = self.ema_policy = None
        self.rollouts_done = 0
        self.data_position: Optional[tuple[int, int]] = None  # (epoch, rollouts consumed in it); see PromptDataModule
        self.measure_ptx_grad_norm = False  # PretrainMixLogger switches it on; it costs a copy of the gradients
        self.last_rollout: Optional[Rollout] = None
        self.last_stats: dict[str, Tensor] = {}
        self.phase = "idle"  # shown in the progress bar: generating / scoring / updating
        self._generation_time = 0.0

    # ------------------------------------------------------------------------------------------
    # Models

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        frozen_dtype = getattr(torch, hp.frozen_dtype) if hp.frozen_dtype else None
        self.policy = apply_lora(load_causal_lm(hp.policy, gradient_checkpointing=hp.gradient_checkpointing).train(), hp.lora)
        self.reference_model = self.build_reference_model(frozen_dtype)
        self.reward_model = load_scalar_model(hp.reward_model, dtype=frozen_dtype, trainable=False)
        if self.uses_value_model:
            source = hp.value_model or hp.reward_model
            value_model = load_scalar_model(source, gradient_checkpointing=hp.gradient_checkpointing).train()
            self.value_model = apply_lora(value_model, hp.lora, head=scalar_head_name(value_model))
        if hp.ema_decay is not None:
            self.ema_policy = copy.deepcopy(self.policy).eval().requires_grad_(False)
        # FSDP2 under ModelParallelStrategy (each model its own unit, the EMA sharded like the policy); else a no-op.
        shard_models(self, [self.policy, self.reference_model, self.reward_model, self.value_model, self.ema_policy])
        # Lightning warnings that do not apply: frozen models and the EMA are in eval mode on purpose, and a
        # checkpoint after the rollout's optimizer steps is exactly the state a resume needs.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")

    def build_reference_model(self, dtype: Optional[torch.dtype]):
        """Hook: the frozen KL reference, a second copy of the SFT model; None with LoRA (the policy with its
        adapters disabled is the reference, see :meth:`reference_logprobs`)."""
        if self.hparams.lora is not None:
            return None
        return load_causal_lm(self.hparams.policy, dtype=dtype, trainable=False)

    def eval_policy(self):
        """The policy used for validation and export: its EMA when enabled (paper), else the policy."""
        return self.ema_policy if self.ema_policy is not None else self.policy

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only trained state (policy, value model, EMA): frozen models are rebuilt from their directories."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(tuple(f"{prefix}{name}." for name in FROZEN_MODELS))]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads checkpoints without the frozen models; anything else missing or unexpected still fails when strict."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(tuple(f"{name}." for name in FROZEN_MODELS))]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match PPOModule: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result

    def configure_optimizers(self):
        """One AdamW with a parameter group per trained model, so ``global_step`` counts updates."""
        hp = self.hparams
        groups = [{"params": list(self.policy.parameters()), "lr": hp.learning_rate}]
        if self.value_model is not None:
            groups.append({"params": list(self.value_model.parameters()), "lr": hp.value_learning_rate or hp.learning_rate})
        optimizer = adamw(groups, hp.learning_rate, hp.betas, hp.weight_decay)
        scheduler = warmup_constant_schedule(optimizer, hp.warmup_rollouts, hp.warmup_start)  # stepped once per rollout
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    # ------------------------------------------------------------------------------------------
    # One PPO iteration

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> None:
        if self.hparams.gamma_ptx > 0 and "ptx" not in batch:
            raise ConfigError(f"gamma_ptx={self.hparams.gamma_ptx} needs pretraining data: set data.init_args.ptx (and ptx_ratio > 0), or gamma_ptx: 0 for plain PPO")
        where = f"rollout {self.rollouts_done} (global step {self.global_step})"
        rollout = self.make_rollout(batch["prompts"], where)
        generation_time, started = self._generation_time, time.perf_counter()
        self._show_phase("updating")
        with local_backward(self):  # DDP: gradients averaged once per optimizer step (sync_gradients)
            stats = self.ppo_update(rollout, batch.get("ptx") if self.hparams.gamma_ptx > 0 else None, where)
        stats["perf/generation_tokens_per_sec"] = rollout.response_lengths.sum() / max(generation_time, 1e-9)
        stats["perf/training_tokens_per_sec"] = stats.pop("tokens") / max(time.perf_counter() - started, 1e-9)
        self.lr_schedulers().step()
        sequence_kl = masked_sum(rollout.kl, rollout.response_mask, dim=1)
        self.kl_controller.update(float(all_reduce_mean(sequence_kl.mean(), self)), n_steps=len(rollout))
        self.rollouts_done += 1
        self.data_position = (self.current_epoch, batch_idx + 1)
        self.last_rollout, self.last_stats = rollout, stats
        metrics = {**rollout_metrics(rollout), "rollout/beta": torch.tensor(self.kl_controller.beta)}
        metrics.update({k: v for k, v in stats.items() if not k.startswith("ptx/")})  # ptx/*: PretrainMixLogger
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rollout))
        self.log_dict({"reward": metrics["rollout/score"], "kl": metrics["rollout/kl"]}, prog_bar=True, logger=False,
                      on_step=True, on_epoch=False, batch_size=len(rollout))
        self._show_phase("idle")

    @torch.no_grad()
    def make_rollout(self, prompts: dict[str, Tensor], where: str = "rollout") -> Rollout:
        """The experience phase: generate, score, and compute rewards and advantages."""
        hp = self.hparams
        self._show_phase("generating")
        started = time.perf_counter()
        with eval_mode(self.policy), seeded(self._rollout_seed(), self.device):
            rollout = self.generate_rollout(prompts, model=self.policy, num_samples=hp.samples_per_prompt)
        self._generation_time = time.perf_counter() - started
        self._show_phase("scoring")
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
        return rollout

    def ppo_update(self, rollout: Rollout, ptx: Optional[dict[str, Tensor]], where: str = "update") -> dict[str, Tensor]:
        """The optimisation phase: ``ppo_epochs`` x minibatches, one optimizer step each, with its ptx batch."""
        hp = self.hparams
        optimizer = self.optimizers()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps_per_epoch = math.ceil(len(rollout) / hp.minibatch_size)
        ptx_steps = [select_rows(ptx, r) for r in torch.arange(len(ptx["input_ids"])).tensor_split(steps_per_epoch)] if ptx else []
        generator = torch.Generator().manual_seed(self._rollout_seed())
        totals: dict[str, Tensor] = {}
        tokens = torch.zeros((), device=self.device)
        for _ in range(hp.ppo_epochs):
            order = torch.randperm(len(rollout), generator=generator).to(self.device)
            for step, minibatch in enumerate(order.split(hp.minibatch_size)):
                optimizer.zero_grad()
                for rows in minibatch.split(hp.micro_batch_size):
                    micro = rollout.select(rows)
                    loss, stats = self.ppo_loss(micro)
                    check_finite("the PPO loss", loss, where)
                    self.manual_backward(loss * (len(rows) / len(minibatch)))
                    accumulate(totals, stats, len(rows) / len(rollout) / hp.ppo_epochs)
                    tokens += micro.attention_mask.sum()
                if ptx_steps and len(ptx_steps[step]["input_ids"]):
                    ptx_stats = self.ptx_backward(ptx_steps[step], params, where)
                    tokens += ptx_stats.pop("tokens")
                    accumulate(totals, ptx_stats, 1 / (steps_per_epoch * hp.ppo_epochs))
                sync_gradients(self, params)
                norm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm or math.inf)
                check_finite("the gradient norm", norm, where)
                accumulate(totals, {"train/grad_norm": norm}, 1 / (steps_per_epoch * hp.ppo_epochs))
                optimizer.step()
                if self.ema_policy is not None:
                    ema_update(self.ema_policy.parameters(), self.policy.parameters(), hp.ema_decay)
        totals["train/lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        totals["tokens"] = tokens
        return totals

    def ppo_loss(self, micro: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """Policy loss plus ``value_loss_coef`` x value loss on one micro-batch, and its detached parts."""
        logprobs = logprobs_from_logits(response_logits(self.policy, micro, self.hparams.temperature), micro.responses)
        policy = self.policy_loss(micro, logprobs)
        loss = policy.loss
        stats = {"train/policy_loss": policy.loss.detach(), "train/clip_fraction": policy.clip_fraction,
                 "train/approx_kl": policy.approx_kl}
        if self.value_model is not None:
            value = self.value_loss(micro, response_values(self.value_model, micro))
            loss = loss + self.hparams.value_loss_coef * value.loss
            stats.update({"train/value_loss": value.loss.detach(), "train/value_clip_fraction": value.clip_fraction})
        return loss, stats

    def ptx_backward(self, ptx: dict[str, Tensor], params: list[Tensor], where: str) -> dict[str, Tensor]:
        """``gamma_ptx`` x next-token loss on one step's pretraining batch, backpropagated into the gradients
        the PPO loss left (one optimizer step for both, as in the paper). With ``measure_ptx_grad_norm`` the
        PPO gradients are set aside meanwhile, so both norms are measured separately."""
        hp = self.hparams
        set_aside = [p.grad for p in params] if self.measure_ptx_grad_norm else None
        stats = {}
        if set_aside is not None:
            stats["ptx/ppo_grad_norm"] = grad_norm(params)
            for p in params:
                p.grad = None
        total = (ptx["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
        loss_sum = torch.zeros((), device=self.device)
        for rows in torch.arange(len(ptx["input_ids"])).split(hp.ptx_micro_batch_size or hp.micro_batch_size):
            loss, n_tokens = self.lm_loss(self.policy, select_rows(ptx, rows))
            check_finite("the ptx loss", loss, where)
            self.manual_backward(hp.gamma_ptx * loss * (n_tokens / total))
            loss_sum += loss.detach() * n_tokens
        if set_aside is not None:
            stats["ptx/grad_norm"] = grad_norm(params)
            for p, grad in zip(params, set_aside):
                p.grad = grad if p.grad is None else (p.grad if grad is None else p.grad.add_(grad))
        stats.update({"ptx/loss": loss_sum / total, "tokens": ptx["attention_mask"].sum()})
        return stats

    @staticmethod
    def lm_loss(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Next-token loss of ``model`` on a right-padded text batch: (mean over tokens, token count)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return next_token_loss(logits, batch["labels"])

    # ------------------------------------------------------------------------------------------
    # Hooks for custom objectives

    def generate_rollout(self, prompts: dict[str, Tensor], *, model, num_samples: int = 1) -> Rollout:
        """Hook: sample ``num_samples`` responses per prompt (adjacent rows) with ``model`` and lay them out, with
        the policy's log-probs and entropy recorded while sampling (an override may leave them None: then
        :meth:`make_rollout` scores the responses with a forward pass)."""
        hp = self.hparams
        ids = prompts["input_ids"].repeat_interleave(num_samples, dim=0)
        mask = prompts["attention_mask"].repeat_interleave(num_samples, dim=0)
        chunk = hp.generation_batch_size or len(ids)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        recorders = [SampledTokenLogprobs(hp.temperature) for _ in range(math.ceil(len(ids) / chunk))]  # saves a forward
        responses = [
            generate_rollout(model, i, m, max_new_tokens=hp.max_new_tokens, temperature=hp.temperature, top_p=hp.top_p,
                             eos_token_id=eos, pad_token_id=pad, logits_processor=[recorder])
            for i, m, recorder in zip(ids.split(chunk), mask.split(chunk), recorders)
        ]
        rollout = concat_responses(ids, mask, pad_columns(responses, pad), eos)
        recorded = [recorder.finish(out) for recorder, out in zip(recorders, responses)]
        rollout.logprobs, rollout.entropy = (pad_columns(list(parts), 0.0) for parts in zip(*recorded))
        return rollout

    def reference_logprobs(self, rollout: Rollout) -> Tensor:
        """Hook: ``[B, R]`` log-probs of the responses under the KL reference (the frozen SFT model)."""
        hp = self.hparams
        if self.reference_model is None:  # LoRA: the SFT model is the policy without its adapters
            with adapters_disabled(self.policy):
                return in_chunks(rollout, hp.micro_batch_size, lambda c: response_logprobs(self.policy, c, hp.temperature))
        return in_chunks(rollout, hp.micro_batch_size, lambda c: response_logprobs(self.reference_model, c, hp.temperature))

    def score_responses(self, rollout: Rollout) -> Tensor:
        """Hook: ``[B]`` sequence rewards. Default: the reward model's centred score at the last response token
        (also kept raw on ``rollout.rm_scores``), minus ``missing_eos_penalty`` for responses without EOS."""
        rollout.rm_scores = in_chunks(rollout, self.hparams.micro_batch_size, lambda c: sequence_rewards(
            self.reward_model, c.input_ids, c.attention_mask, centered=False))
        rollout.rm_bias = reward_bias(self.reward_model)
        scores = rollout.rm_scores + rollout.rm_bias
        if self.hparams.missing_eos_penalty is not None:
            scores = scores - self.hparams.missing_eos_penalty * (~rollout.ended).to(scores.dtype)
        return scores

    def compute_rewards(self, rollout: Rollout) -> Tensor:
        """Hook: ``[B, R]`` per-token rewards: ``-beta * KL_t`` everywhere plus the score on the last token (eq. 2)."""
        return per_token_rewards(rollout.scores, rollout.kl, rollout.response_mask, self.kl_controller.beta)

    def estimate_advantages(self, rollout: Rollout) -> tuple[Tensor, Optional[Tensor]]:
        """Hook: ``(advantages [B, R], returns [B, R] or None)``. Default: GAE, then whitening."""
        hp = self.hparams
        advantages, returns = gae_advantages(rollout.rewards, rollout.values, rollout.response_mask, hp.gamma, hp.lam)
        return (whiten(advantages, rollout.response_mask) if hp.whiten_advantages else advantages), returns

    def policy_loss(self, micro: Rollout, logprobs: Tensor) -> PolicyLossOutput:
        """Hook: the policy loss of a micro-batch from the current ``logprobs`` (with grad). Default: clipped surrogate."""
        return clipped_policy_loss(logprobs, micro.logprobs, micro.advantages, micro.response_mask, self.hparams.clip_range)

    def value_loss(self, micro: Rollout, values: Tensor) -> ValueLossOutput:
        """Hook: the value loss of a micro-batch from the current ``values`` (with grad). Default: clipped."""
        return clipped_value_loss(values, micro.values, micro.returns, micro.response_mask, self.hparams.value_clip_range)

    # ------------------------------------------------------------------------------------------
    # Metrics, validation, checkpoints, export

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out pretraining loss on text batches; reward and KL of the EMA policy's samples on prompt batches."""
        model, size = self.eval_policy(), len(batch["input_ids"])
        if "labels" in batch:
            loss, n_tokens = self.lm_loss(model, batch)
            self.log("val/pretrain_loss", loss, batch_size=int(n_tokens), add_dataloader_idx=False, sync_dist=True)
            return
        with seeded(self.hparams.seed + batch_idx, self.device):
            rollout = self.generate_rollout(batch, model=model, num_samples=1)
        if rollout.logprobs is None:
            rollout.logprobs = in_chunks(rollout, self.hparams.micro_batch_size, lambda c: response_logprobs(model, c, self.hparams.temperature))
        rollout.ref_logprobs = self.reference_logprobs(rollout)
        rollout.scores = self.score_responses(rollout)
        rollout.kl = kl_penalty(rollout.logprobs, rollout.ref_logprobs, self.hparams.kl_estimator)
        metrics = {k.replace("rollout/", "val/"): v for k, v in rollout_metrics(rollout).items() if k.startswith("rollout/")}
        self.log_dict(metrics, batch_size=size, add_dataloader_idx=False, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ppo"] = {"kl_controller": self.kl_controller.state_dict(), "rollouts_done": self.rollouts_done,
                             "data_position": self.data_position, "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("ppo")
        if state:
            self.kl_controller.load_state_dict(state["kl_controller"])
            self.rollouts_done, self.data_position = state["rollouts_done"], state["data_position"]
            set_rng_states(state["rng"])

    def on_fit_end(self) -> None:
        if self.hparams.output_dir:
            lora_export = self.hparams.lora.export if self.hparams.lora else "merged"
            export_hf(self, "ema_policy" if self.ema_policy is not None else "policy", self.tokenizer, self.hparams.output_dir,
                      lora_export=lora_export)

    def _rollout_seed(self) -> int:
        return ((self.hparams.seed * 1_000_003 + self.rollouts_done) * 1_009 + self.global_rank) % (2**63)

    def _show_phase(self, phase: str) -> None:
        """Name the running phase (generating / scoring / updating) in the progress bar's description."""
        self.phase = phase
        bar = self._trainer.progress_bar_callback if self._trainer is not None else None
        text = f"Epoch {self.current_epoch}" + ("" if phase == "idle" else f" [{phase}]")
        try:
            if isinstance(bar, TQDMProgressBar):
                bar.train_progress_bar.set_description(text)
            elif isinstance(bar, RichProgressBar) and bar.progress is not None and bar.train_progress_bar_id is not None:
                bar.progress.update(bar.train_progress_bar_id, description=text)
        except (AttributeError, TypeError):  # no bar drawn yet
            pass
