"""Every PPOModule setting checked at construction, before any model loads: one line naming the option and
its allowed range, or the setting that does not apply to the chosen objective."""

from __future__ import annotations

from typing import Any

from lit_rlhf.engines.correction import check_truncated_is_cap
from lit_rlhf.errors import ConfigError, check_option
from lit_rlhf.models.sources import require_stage_output

#: Critic settings and their defaults: a critic-free run (rloo/grpo) refuses a changed value instead of ignoring it.
CRITIC_DEFAULTS = {"value_model": None, "value_learning_rate": None, "value_loss_coef": 0.1, "value_clip_range": 0.2,
                   "lam": 0.95, "gamma": 1.0}


def check_ppo_options(hp: Any) -> None:
    """Raise :class:`ConfigError` for the first PPOModule setting that cannot work."""
    for name in ("rollout_batch_size", "samples_per_prompt", "minibatch_size", "micro_batch_size", "ppo_epochs",
                 "max_new_tokens", "kl_horizon", "generation_batch_size", "ptx_micro_batch_size"):
        check_option(name, hp[name], min=1, integer=True)
    check_option("warmup_rollouts", hp.warmup_rollouts, min=0, integer=True)
    for name in ("rollout_batch_size must be a multiple of minibatch_size", "rollout_batch_size must be a multiple of samples_per_prompt"):
        divisor = name.rsplit(" ", 1)[1]
        if hp.rollout_batch_size % hp[divisor]:
            raise ConfigError(f"{name} (rollout_batch_size={hp.rollout_batch_size}, {divisor}={hp[divisor]})")
    check_option("temperature", hp.temperature, min=0)
    check_option("top_p", hp.top_p, min=0, max=1, min_open=True)
    check_option("kl_coef", hp.kl_coef, min=0)
    check_option("target_kl", hp.target_kl, min=0, min_open=True)
    check_option("gamma", hp.gamma, min=0, max=1)
    check_option("lam", hp.lam, min=0, max=1)
    check_option("clip_range", hp.clip_range, min=0, min_open=True)
    check_option("value_clip_range", hp.value_clip_range, min=0, min_open=True)
    for name in ("value_loss_coef", "entropy_coef", "gamma_ptx", "weight_decay", "missing_eos_penalty"):
        check_option(name, hp[name], min=0)
    for name in ("learning_rate", "value_learning_rate", "max_grad_norm"):
        check_option(name, hp[name], min=0, min_open=True)
    check_option("warmup_start", hp.warmup_start, min=0, max=1, min_open=True)
    check_truncated_is_cap(hp.truncated_is_cap)
    check_option("ema_decay", hp.ema_decay, min=0, max=1, max_open=True)
    for i, beta in enumerate(hp.betas):
        check_option(f"betas[{i}]", beta, min=0, max=1, max_open=True)
    if hp.advantage_estimator != "gae":
        if hp.samples_per_prompt < 2:
            raise ConfigError(f"advantage_estimator={hp.advantage_estimator} compares the samples of a prompt: set "
                              f"samples_per_prompt >= 2 (got {hp.samples_per_prompt})")
        changed = [name for name, default in CRITIC_DEFAULTS.items() if hp[name] != default]
        if changed:
            raise ConfigError(f"{', '.join(changed)} set, but advantage_estimator={hp.advantage_estimator} trains no value "
                              "model: remove them, or use advantage_estimator: gae")


def scalar_model_sources(hp: Any, rewards, uses_critic: bool) -> dict[str, str]:
    """The reward/value model directories the run will read (checked to exist), by argument name. ``reward_model``
    is needed only when a reward component reads it or the critic starts from it."""
    needs_reward_model = (uses_critic and hp.value_model is None) or any(r.uses_reward_model() for r in rewards)
    if needs_reward_model and hp.reward_model is None:
        raise ConfigError("reward_model is not set, but the default reward (RewardModelScore) or the value model's "
                          "initialisation needs it: set model.init_args.reward_model, or rewards / value_model")
    sources = {"reward_model": hp.reward_model if needs_reward_model else None, "value_model": hp.value_model}
    sources = {argument: source for argument, source in sources.items() if source}
    for argument, source in sources.items():
        require_stage_output(source, argument, "configs/rm.yaml")
    return sources
