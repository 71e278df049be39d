"""``compare.py`` worker: lit-rlhf's GRPO, DPO, PPO with the vLLM engine, and sync/async PPO on the shared workload.

    python benchmarks/compare_lit_rl.py --stage grpo|dpo --workspace DIR [--threads 2]
    .venv-vllm/bin/python benchmarks/compare_lit_rl.py --stage ppo-vllm --workspace DIR
    .venv-vllm/bin/python benchmarks/compare_lit_rl.py --stage async --max_staleness 0|1 --workspace DIR

- ``grpo``: ``PPOModule`` with ``advantage.estimator: grpo``, no reward or value model, the workspace's
  ``keyword_reward`` through ``FunctionReward``; KL to the reference in the loss (k3), as TRL's GRPO.
- ``dpo``: ``DPOModule`` on the workspace's pairs file (``RewardDataModule`` reads its chosen/rejected layout).
- ``ppo-vllm``: the ``ppo`` stage of ``compare_lit.py`` (same module and settings) with ``VLLMEngine``;
  needs the vllm environment of docs/engines.md.
- ``async``: ``ppo-vllm`` with ``batch.max_staleness`` set (0: the synchronous loop; 1: the engine samples the
  next rollout while the trainer updates), both sides with ``correction.truncated_is_cap`` 2.0 (stale sampling
  requires a cap; the synchronous side gets the same so that only the staleness differs).

Counters (after the warm-up) as in ``compare_lit.py``: ``episodes`` and ``generated_tokens`` per rollout, with
``generate_seconds``, ``sync_seconds`` and ``update_seconds`` (engine generate, weight sync, update phase), or
``pairs``, ``sequences``, ``tokens`` and ``positions`` per DPO step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import PhaseTimer, StepClock, configure_process, emit_result  # noqa: E402
from compare_lit import fit, fit_rollouts, ppo_batch, ppo_module, rollout_counts, step_clock_callback  # noqa: E402
from compare_workspace import load_settings  # noqa: E402

STAGES = ("grpo", "dpo", "ppo-vllm", "async")
#: correction.truncated_is_cap of both sides of the async row (configs/engine/async.yaml's value)
ASYNC_TRUNCATED_IS_CAP = 2.0


def timed_fit(module, ws: Path, s: dict) -> dict:
    """``fit_rollouts`` with the time in the engine's ``generate`` and ``sync_weights`` and in the update phase
    summed over the measured rollouts beside the counters (the rest of a rollout is scoring and the loop)."""
    timer = PhaseTimer(
        generate=(module.engine, "generate"), sync=(module.engine, "sync_weights"), update=(module, "ppo_update")
    )
    return fit_rollouts(module, ws, s, lambda *step: {**rollout_counts(*step), **timer.take()})


def run_grpo(ws: Path, settings: dict) -> dict:
    from lit_rlhf.rewards import FunctionReward

    s = settings["grpo"]
    batch = {
        "rollout_batch_size": s["prompts_per_rollout"] * s["num_generations"],
        "samples_per_prompt": s["num_generations"],
        "minibatch_size": s["minibatch_size"],
        "micro_batch_size": s["micro_batch_size"],
        "ppo_epochs": 1,
    }
    module = ppo_module(
        ws,
        s,
        reward_model=None,
        rewards=[FunctionReward("compare_workspace:keyword_reward")],
        batch=batch,
        advantage={"estimator": "grpo"},
        kl={"coef": s["kl_coef"], "estimator": "k3", "placement": "loss"},
        loss={"clip_range": s["clip_range"], "aggregation": "token_mean", "max_grad_norm": 1.0},  # TRL: DAPO, clip 1
    )
    return timed_fit(module, ws, s)


def run_dpo(ws: Path, settings: dict) -> dict:
    from lit_rlhf.data import RewardDataModule
    from lit_rlhf.modules import DPOModule
    from lit_rlhf.settings import OptimizerSettings

    s = settings["dpo"]
    clock = StepClock(s["warmup_steps"])
    module = DPOModule(
        policy=str(ws / "policy"),
        tokenizer=str(ws / "tokenizer"),
        beta=s["beta"],
        optimizer=OptimizerSettings(learning_rate=s["learning_rate"]),
    )
    data = RewardDataModule(
        train=str(ws / "data/dpo_pairs.jsonl"),
        tokenizer=str(ws / "tokenizer"),
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        val_fraction=0.0,
        seed=0,
    )

    def count(module, batch, outputs) -> dict:
        return {
            "pairs": batch["pairs"].num_pairs,
            "sequences": len(batch["input_ids"]),
            "tokens": int(batch["attention_mask"].sum()),
            "positions": batch["input_ids"].numel(),
        }

    steps = s["warmup_steps"] + s["measured_steps"]
    fit(module, data, steps, step_clock_callback(clock, count), gradient_clip_val=1.0)  # TRL clips at 1.0 too
    return clock.measured()


def run_ppo_vllm(ws: Path, settings: dict, max_staleness: int | None = None) -> dict:
    """The ppo stage with lit-rlhf's vLLM engine; with ``max_staleness`` set, that ``batch.max_staleness``."""
    from lit_rlhf.engines.vllm import VLLMEngine

    s, v = settings["ppo"], settings["vllm"]
    engine = VLLMEngine(dtype=v["dtype"], kv_cache_memory_gb=v["kv_cache_memory_gb"], max_model_len=v["max_model_len"])
    overrides = {}
    if max_staleness is not None:  # both sides of the async row correct alike (the cap stale sampling requires)
        overrides = {
            "batch": {**ppo_batch(s), "max_staleness": max_staleness},
            "correction": {"truncated_is_cap": ASYNC_TRUNCATED_IS_CAP},
        }
    try:
        return {**timed_fit(ppo_module(ws, s, engine=engine, **overrides), ws, s), "engine_dtype": v["dtype"]}
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max_staleness", type=int, help="the async stage's batch.max_staleness (0 or 1)")
    args = parser.parse_args()
    if (args.stage == "async") != (args.max_staleness is not None):
        parser.error("--max_staleness goes with --stage async, and only with it")
    configure_process(args.threads)
    import lit_rlhf

    settings = load_settings(args.workspace)
    if args.stage == "grpo":
        result = run_grpo(args.workspace, settings)
    elif args.stage == "dpo":
        result = run_dpo(args.workspace, settings)
    else:
        result = run_ppo_vllm(args.workspace, settings, args.max_staleness)
    extra = {} if args.max_staleness is None else {"max_staleness": args.max_staleness}
    emit_result(
        {
            "framework": "lit-rlhf",
            "version": getattr(lit_rlhf, "__version__", "dev"),
            "stage": args.stage,
            **extra,
            **result,
        }
    )


if __name__ == "__main__":  # vLLM starts engine processes: this script must be import-safe
    main()
