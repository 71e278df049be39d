"""``compare.py`` worker: train one stage with lit-rlhf on the shared workload and print its counters.

    python benchmarks/compare_lit.py --stage sft|rm4|rm9|ppo --workspace DIR [--threads 2]

Each stage runs through a plain ``lightning.Trainer`` with the module and data module a config
would build, and without a logger, checkpoints or progress bar (TRL's worker turns off the same).
SFT and RM clip gradients at norm 1.0 as TRL's trainers do by default; PPO clips nowhere, like
TRL's PPO loop.
The PPO run also measures, in this process and on the same models, the ceiling: bare HF
``generate`` tokens/s on the same prompts (alternated with lit-rlhf's own rollout generation, so both
see the same process state), and bare forward+backward tokens/s of the policy and the value model on
the rollout's sequences, so the rollout and update phases can be read as fractions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import StepClock, configure_process, emit_result  # noqa: E402
from compare_workspace import load_settings  # noqa: E402


def step_clock_callback(clock: StepClock, count):
    """A callback that stamps the clock at the end of each training batch with ``count(module, batch, outputs)``."""
    from lightning.pytorch.callbacks import Callback

    class StepClockCallback(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end(**count(pl_module, batch, outputs))

    return StepClockCallback()


def fit(module, datamodule, steps: int, callback, gradient_clip_val=None) -> None:
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=steps,
        logger=False,
        gradient_clip_val=gradient_clip_val,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
    )
    trainer.fit(module, datamodule=datamodule)


def run_sft(ws: Path, settings: dict) -> dict:
    from lit_rlhf.data import SFTDataModule
    from lit_rlhf.modules import SFTModule
    from lit_rlhf.settings import OptimizerSettings

    s = settings["sft"]
    clock = StepClock(s["warmup_steps"])
    module = SFTModule(model=str(ws / "policy"), optimizer=OptimizerSettings(learning_rate=s["learning_rate"]))
    data = SFTDataModule(
        train=str(ws / "data/sft.jsonl"),
        tokenizer=str(ws / "tokenizer"),
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        seed=0,
    )

    def count(module, batch, outputs) -> dict:
        return {
            "tokens": int(batch["attention_mask"].sum()),
            "sequences": len(batch["input_ids"]),
            "positions": batch["input_ids"].numel(),
        }

    fit(module, data, s["warmup_steps"] + s["measured_steps"], step_clock_callback(clock, count), gradient_clip_val=1.0)
    return clock.measured()


def run_rm(ws: Path, settings: dict, k: int) -> dict:
    from lit_rlhf.data import RewardDataModule
    from lit_rlhf.modules import RewardModule
    from lit_rlhf.settings import OptimizerSettings

    s = settings["rm"]
    clock = StepClock(s["warmup_steps"])
    module = RewardModule(model=str(ws / "reward"), optimizer=OptimizerSettings(learning_rate=s["learning_rate"]))
    data = RewardDataModule(
        train=str(ws / f"data/rm_k{k}.jsonl"),
        tokenizer=str(ws / "tokenizer"),
        max_length=s["max_length"],
        batch_size=s["prompts_per_step"][str(k)],
        seed=0,
    )

    def count(module, batch, outputs) -> dict:
        return {
            "comparisons": batch["pairs"].num_pairs,
            "sequences": len(batch["input_ids"]),
            "tokens": int(batch["attention_mask"].sum()),
            "positions": batch["input_ids"].numel(),
        }

    fit(
        module,
        data,
        s["warmup_steps"] + s["measured_steps"][str(k)],
        step_clock_callback(clock, count),
        gradient_clip_val=1.0,
    )
    return clock.measured()


def timed_ppo_module_class():
    """PPOModule that times its generate calls and update phases (through its hooks, behaviour unchanged)."""
    from lit_rlhf.modules import PPOModule

    class TimedPPOModule(PPOModule):
        def setup_timers(self) -> None:
            self.generate_seconds = self.update_seconds = 0.0
            self.generated_tokens = self.update_tokens = 0

        def generate_rollout(self, prompts, *, model, num_samples=1):
            started = time.perf_counter()
            rollout = super().generate_rollout(prompts, model=model, num_samples=num_samples)
            self.generate_seconds = time.perf_counter() - started
            self.generated_tokens = int(rollout.response_lengths.sum())
            return rollout

        def ppo_update(self, rollout, ptx, where="update", **kwargs):
            started = time.perf_counter()
            stats = super().ppo_update(rollout, ptx, where, **kwargs)
            self.update_seconds = time.perf_counter() - started
            self.update_tokens = int(rollout.attention_mask.sum()) * self.batch.ppo_epochs
            self.last_rollout = rollout  # the benchmark's own record, for the bare-model comparisons below
            return stats

    return TimedPPOModule


def generation_rates(module, prompts: dict, s: dict, repeats: int = 5) -> tuple[float, float]:
    """Median generated tokens/s of lit-rlhf's rollout generation (``PPOModule.generate_rollout`` in eval mode,
    seeded, log-probs recorded) and of a plain ``model.generate`` with the same sampling settings on the same
    prompts, called alternately after one warm-up call each, so both see the same process state."""
    import torch

    from lit_rlhf.episodes import response_mask_from_tokens
    from lit_rlhf.modules.rollout import eval_mode

    policy, tokenizer, width = module.policy, module.tokenizer, prompts["input_ids"].shape[1]

    def lit_rlhf() -> int:
        with eval_mode(policy), torch.no_grad():
            return int(module.generate_rollout(prompts, model=policy).response_lengths.sum())

    def bare() -> int:
        with eval_mode(policy), torch.no_grad():
            out = policy.generate(
                input_ids=prompts["input_ids"],
                attention_mask=prompts["attention_mask"],
                do_sample=True,
                temperature=s["temperature"],
                top_p=1.0,
                top_k=0,
                max_new_tokens=s["max_new_tokens"],
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        return int(response_mask_from_tokens(out[:, width:], tokenizer.eos_token_id)[0].sum())

    rates: dict = {lit_rlhf: [], bare: []}
    for i in range(repeats + 1):  # the first round warms up
        for fn in (lit_rlhf, bare):
            torch.manual_seed(i)
            started = time.perf_counter()
            tokens = fn()
            if i:
                rates[fn].append(tokens / (time.perf_counter() - started))
    return statistics.median(rates[lit_rlhf]), statistics.median(rates[bare])


def bare_forward_backward_rate(policy, value_model, rollout, micro_batch_size: int, repeats: int = 3) -> float:
    """Tokens/s of plain HF forward+backward of the policy and the value model over the rollout's micro-batches
    (full-vocabulary logits, a trivial loss, no optimizer step)."""
    policy.train(), value_model.train()
    rates = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        for ids, mask in zip(rollout.input_ids.split(micro_batch_size), rollout.attention_mask.split(micro_batch_size)):
            loss = (
                policy(input_ids=ids, attention_mask=mask).logits.mean()
                + value_model(input_ids=ids, attention_mask=mask).logits.mean()
            )
            loss.backward()
        seconds = time.perf_counter() - started
        policy.zero_grad(set_to_none=True), value_model.zero_grad(set_to_none=True)
        if i:
            rates.append(int(rollout.attention_mask.sum()) / seconds)
    return statistics.median(rates)


def ppo_batch(s: dict) -> dict:
    """PPOModule's ``batch`` settings from the ppo stage's sizes."""
    keys = ("rollout_batch_size", "minibatch_size", "micro_batch_size", "ppo_epochs")
    return {key: s[key] for key in keys}


def ppo_module(ws: Path, s: dict, module_class=None, **overrides):
    """``module_class`` (default ``PPOModule``) on the workspace with the settings ``s`` of the ppo stage, as TRL's
    PPO runs them (no gradient clipping, EMA or pretraining mix: TRL's PPO has none); ``overrides`` replace
    constructor arguments (the GRPO, vLLM and async rows)."""
    from lit_rlhf.modules import PPOModule

    arguments = dict(
        policy=str(ws / "policy"),
        reward_model=str(ws / "reward"),
        tokenizer=str(ws / "tokenizer"),
        batch=overrides.pop("batch", None) or ppo_batch(s),
        sampling={"max_new_tokens": s["max_new_tokens"], "temperature": s["temperature"]},
        kl={"coef": s["kl_coef"], "estimator": "k1"},
        optimizer={"learning_rate": s["learning_rate"], "warmup_steps": 0},
        loss={"max_grad_norm": None},
        ema_decay=None,
        ptx={"gamma": 0.0},
        seed=0,
    )
    return (module_class or PPOModule)(**{**arguments, **overrides})


def rollout_counts(module, batch, outputs) -> dict:
    """A rollout's episodes and generated tokens, from the ``RolloutSummary`` its training step returned."""
    from lit_rlhf.episodes import RolloutSummary

    episodes = RolloutSummary.from_outputs(outputs).episodes
    return {"episodes": len(episodes), "generated_tokens": int(episodes.response_lengths.sum())}


def fit_rollouts(module, ws: Path, s: dict, count=rollout_counts) -> dict:
    """Train ``module`` for ``s``'s warm-up + measured rollouts on the workspace prompts; the measured counters."""
    from lit_rlhf.data import PromptDataModule

    clock = StepClock(s["warmup_rollouts"])
    batch = module.batch
    data = PromptDataModule(
        prompts=str(ws / "data/prompts.jsonl"),
        tokenizer=str(ws / "tokenizer"),
        max_prompt_length=s["max_prompt_length"],
        seed=0,
        rollout_batch_size=batch.rollout_batch_size,
        samples_per_prompt=batch.samples_per_prompt,
    )
    optimizer_steps_per_rollout = batch.ppo_epochs * batch.rollout_batch_size // batch.minibatch_size  # max_steps
    rollouts = s["warmup_rollouts"] + s["measured_rollouts"]
    fit(module, data, rollouts * optimizer_steps_per_rollout, step_clock_callback(clock, count))
    return clock.measured()


def run_ppo(ws: Path, settings: dict) -> dict:
    s = settings["ppo"]
    module = ppo_module(ws, s, timed_ppo_module_class())
    module.setup_timers()
    phases = []

    def count(module, batch, outputs):
        phases.append((module.generate_seconds, module.generated_tokens, module.update_seconds, module.update_tokens))
        return {"episodes": len(module.last_rollout), "generated_tokens": module.generated_tokens}

    result = fit_rollouts(module, ws, s, count)
    measured = phases[s["warmup_rollouts"] :]
    result["generate_tokens_per_s"] = sum(p[1] for p in measured) / sum(p[0] for p in measured)
    result["update_tokens_per_s"] = sum(p[3] for p in measured) / sum(p[2] for p in measured)
    last = module.last_rollout
    prompts = {"input_ids": last.prompts, "attention_mask": last.attention_mask[:, : last.prompt_length]}
    result["alternated_generate_tokens_per_s"], result["bare_generate_tokens_per_s"] = generation_rates(
        module, prompts, s
    )
    result["bare_fwd_bwd_tokens_per_s"] = bare_forward_backward_rate(
        module.policy, module.value_model, module.last_rollout, s["micro_batch_size"]
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["sft", "rm4", "rm9", "ppo"], required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_process(args.threads)
    import lit_rlhf

    settings = load_settings(args.workspace)
    if args.stage == "sft":
        result = run_sft(args.workspace, settings)
    elif args.stage.startswith("rm"):
        result = run_rm(args.workspace, settings, int(args.stage[2:]))
    else:
        result = run_ppo(args.workspace, settings)
    emit_result(
        {"framework": "lit-rlhf", "version": getattr(lit_rlhf, "__version__", "dev"), "stage": args.stage, **result}
    )


if __name__ == "__main__":
    main()
