"""``compare.py`` worker: the PPO stage with Hugging Face TRL's ``PPOTrainer`` (``trl.experimental.ppo``).

    python benchmarks/compare_trl_ppo.py --workspace DIR [--threads 2]

TRL dropped its PPOTrainer after release 1.12.0, so run this with an interpreter that has that release,
e.g. ``.venv-trl-ppo/bin/python`` (see ``compare_common.INSTALL``). Settings are SETTINGS["ppo"] of the workspace,
mapped to PPOConfig as lit-rlhf's PPOModule uses them. One clock step is one PPO update (a rollout of
``rollout_batch_size`` prompts, scoring and the optimisation epochs), ended by TRL's ``on_step_end``.

The last stdout line is ``RESULT {json}`` with per-rollout counters summed over the measured rollouts:
``episodes``, ``generated_tokens`` (response tokens up to and including the first EOS, pads excluded),
``prompt_tokens`` (non-pad prompt tokens), ``optimizer_steps`` (real ``torch.optim`` steps) and
``generate_seconds`` (time inside the policy's ``generate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import INSTALL, StepClock, configure_process, emit_result  # noqa: E402
from compare_workspace import load_settings  # noqa: E402


def batch_layout(s: dict) -> dict:
    """PPOConfig batch arguments for lit-rlhf's rollout / minibatch / micro-batch sizes.

    TRL's rollout is ``per_device_train_batch_size * gradient_accumulation_steps`` episodes, cut into
    ``num_mini_batches`` minibatches that are walked in slices of ``per_device_train_batch_size``; but the
    optimizer only really steps every ``gradient_accumulation_steps`` slices (accelerate's ``accumulate``),
    i.e. once per epoch whenever that is > 1. With micro == minibatch (one forward per optimizer step)
    a rollout-sized ``per_device_train_batch_size`` and no accumulation gives exactly lit-rlhf's steps.
    """
    rollout, minibatch, micro = s["rollout_batch_size"], s["minibatch_size"], s["micro_batch_size"]
    if micro == minibatch:
        per_device, accumulation = rollout, 1  # each minibatch slice is one micro-batch of `minibatch` episodes
    else:  # TRL cannot accumulate within a minibatch: right sizes, but one optimizer step per PPO epoch
        per_device, accumulation = micro, rollout // micro
    return {
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "num_mini_batches": rollout // minibatch,
    }


class RolloutMeter:
    """Wraps the policy's ``generate`` (TRL calls it on the unwrapped policy) and counts one rollout's work."""

    def __init__(self, policy, pad_id: int, eos_id: int):
        self.generate, self.pad_id, self.eos_id = policy.generate, pad_id, eos_id
        policy.generate = self  # an instance attribute shadows the method
        self.work = self.fresh()

    @staticmethod
    def fresh() -> dict:
        return {
            "generated_tokens": 0,
            "prompt_tokens": 0,
            "generate_seconds": 0.0,
            "optimizer_steps": 0,
            "generate_calls": 0,
        }

    def __call__(self, *args, **kwargs):
        import torch

        start = time.perf_counter()
        output = self.generate(*args, **kwargs)
        self.work["generate_seconds"] += time.perf_counter() - start
        prompts = kwargs["input_ids"]
        responses = output.sequences[:, prompts.shape[1] :]
        is_eos = responses == self.eos_id
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])
        inside = torch.arange(responses.shape[1]) < ends[:, None]
        self.work["generated_tokens"] += int(((responses != self.pad_id) & inside).sum())
        self.work["prompt_tokens"] += int(kwargs["attention_mask"].sum())
        self.work["generate_calls"] += 1
        return output

    def count_optimizer_step(self, *_):
        self.work["optimizer_steps"] += 1

    def take(self) -> dict:
        work, self.work = self.work, self.fresh()
        if work.pop("generate_calls") < 1:
            raise RuntimeError("the policy's generate was not called during this PPO update: the meter missed it")
        return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    cli = parser.parse_args()
    configure_process(cli.threads)  # before transformers / trl read their environment
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as error:
        print(
            f"TRL's PPOTrainer is unavailable ({error}); it ships up to trl 1.12.0: {INSTALL['trl-ppo']}",
            file=sys.stderr,
        )
        sys.exit(3)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    ws, s = cli.workspace, load_settings(cli.workspace)["ppo"]
    rollouts = s["warmup_rollouts"] + s["measured_rollouts"]
    tokenizer = AutoTokenizer.from_pretrained(ws / "tokenizer", padding_side="left")  # as TRL's PPO example
    prompts = [json.loads(line)["prompt"] for line in (ws / "data" / "prompts.jsonl").read_text().splitlines()]

    def tokenize(batch):
        ids = tokenizer(batch["prompt"], add_special_tokens=False, truncation=True, max_length=s["max_prompt_length"])
        return {"input_ids": ids["input_ids"]}

    dataset = Dataset.from_dict({"prompt": prompts}).map(tokenize, batched=True, remove_columns=["prompt"])

    policy = AutoModelForCausalLM.from_pretrained(ws / "policy")
    reference = AutoModelForCausalLM.from_pretrained(ws / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(ws / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(ws / "reward", num_labels=1)
    meter = RolloutMeter(policy, tokenizer.pad_token_id, tokenizer.eos_token_id)
    clock = StepClock(s["warmup_rollouts"])

    class RolloutClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # once per PPO update, after its optimizer steps
            clock.step_end(episodes=args.batch_size, **meter.take())

    output_dir = tempfile.TemporaryDirectory(prefix="trl-ppo-")  # TRL makes output_dir even when not saving
    config = PPOConfig(
        output_dir=output_dir.name,
        **batch_layout(s),
        num_ppo_epochs=s["ppo_epochs"],
        total_episodes=s["rollout_batch_size"] * rollouts,
        local_rollout_forward_batch_size=s["rollout_batch_size"],
        num_sample_generations=0,
        response_length=s["max_new_tokens"],
        stop_token="eos",
        temperature=s["temperature"],
        missing_eos_penalty=None,
        kl_coef=s["kl_coef"],
        kl_estimator="k1",
        whiten_rewards=False,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        learning_rate=s["learning_rate"],
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        lr_scheduler_type="constant",  # lit-rlhf: constant after its warm-up; TRL's default decays linearly
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,  # TRL's default is True, but its PPO loop never enables it anyway
        eval_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    torch.manual_seed(0)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        callbacks=[RolloutClock()],
    )
    torch_optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # below accelerate's wrapper
    torch_optimizer.register_step_post_hook(meter.count_optimizer_step)
    a = trainer.args
    if (a.batch_size, a.mini_batch_size) != (s["rollout_batch_size"], s["minibatch_size"]):
        raise RuntimeError(f"TRL batch_size {a.batch_size} / mini_batch_size {a.mini_batch_size} differ from SETTINGS")
    print(
        f"TRL layout: batch_size {a.batch_size}, mini_batch_size {a.mini_batch_size}, per_device_train_batch_size "
        f"{a.per_device_train_batch_size}, gradient_accumulation_steps {a.gradient_accumulation_steps}, "
        f"{a.num_total_batches} updates, {type(torch_optimizer).__name__} "
        f"fused={torch_optimizer.defaults.get('fused')}",
        file=sys.stderr,
    )
    if a.gradient_accumulation_steps > 1:
        print(
            "warning: micro_batch_size < minibatch_size: TRL makes one optimizer step per PPO epoch, not one per "
            "minibatch (compare optimizer_steps with optimizer_steps_expected)",
            file=sys.stderr,
        )

    trainer.train()
    output_dir.cleanup()
    emit_result(
        {
            "framework": "trl",
            "version": trl.__version__,
            "stage": "ppo",
            **clock.measured(),
            "optimizer_steps_expected": s["measured_rollouts"]
            * s["ppo_epochs"]
            * (s["rollout_batch_size"] // s["minibatch_size"]),
            "threads": cli.threads,
        }
    )


if __name__ == "__main__":
    main()
