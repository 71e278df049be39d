"""``compare.py`` worker: the GRPO stage with Hugging Face TRL's ``GRPOTrainer`` (TRL >= 1.14, CPU, no vLLM).

    python benchmarks/compare_trl_grpo.py --workspace DIR [--threads 2]

Settings are ``SETTINGS["grpo"]`` of the workspace, mapped to ``GRPOConfig`` as lit-rlhf's ``PPOModule`` with
``advantage.estimator: grpo`` uses them: a rollout (TRL's generation batch) of ``prompts_per_rollout`` prompts x
``num_generations`` completions, trained in minibatches of ``minibatch_size`` completions (one optimizer step
each, ``steps_per_generation`` of them per rollout), one pass (``num_iterations`` 1), the KL to the reference in
the loss (TRL's k3 with ``beta``), clip 0.2, the group-normalised advantage, fp32. The reward is the workspace's
``keyword_share`` of each completion's text, the function lit-rlhf's worker calls too.

One clock step is one rollout: it ends at the optimizer step that finishes the generation batch. The last stdout
line is ``RESULT {json}`` with ``episodes`` (completions) and ``generated_tokens`` (completion tokens up to and
including the first EOS, as TRL passes them to reward functions) summed over the measured rollouts, and
``generate_seconds``, the time inside the policy's ``generate``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_common import PhaseTimer, StepClock, configure_process, emit_result  # noqa: E402
from compare_trl import import_trl, read_jsonl, trainer_arguments  # noqa: E402
from compare_workspace import keyword_share, load_settings  # noqa: E402


class RewardMeter:
    """The GRPO reward function: :func:`keyword_share` of each completion, counting the completions and tokens
    it scored since the last :meth:`take` (TRL scores each generation batch once, right after generating it)."""

    __name__ = "keyword_share"  # TRL names the reward's logged metrics after the function

    def __init__(self):
        self.work = {"episodes": 0, "generated_tokens": 0}

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        self.work["episodes"] += len(completions)
        self.work["generated_tokens"] += sum(len(ids) for ids in completion_ids)
        return [keyword_share(text) for text in completions]

    def take(self) -> dict:
        work, self.work = self.work, {"episodes": 0, "generated_tokens": 0}
        if not work["episodes"]:
            raise RuntimeError("no completion was scored during this rollout: the meter missed the generation")
        return work


def grpo_config(s: dict, output_dir: str):
    """``GRPOConfig`` for the workspace's GRPO settings ``s``."""
    from trl import GRPOConfig

    episodes = s["prompts_per_rollout"] * s["num_generations"]
    return GRPOConfig(
        **trainer_arguments(output_dir),
        per_device_train_batch_size=s["minibatch_size"],
        steps_per_generation=episodes // s["minibatch_size"],
        num_generations=s["num_generations"],
        num_iterations=1,
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=1.0,
        top_k=0,
        beta=s["kl_coef"],
        epsilon=s["clip_range"],
        learning_rate=s["learning_rate"],
        max_steps=(s["warmup_rollouts"] + s["measured_rollouts"]) * (episodes // s["minibatch_size"]),
        model_init_kwargs={"dtype": "float32"},
        log_completions=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage", choices=["grpo"], default="grpo")
    cli = parser.parse_args()
    configure_process(cli.threads)
    trl = import_trl()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    ws, s = cli.workspace, load_settings(cli.workspace)["grpo"]
    tokenizer = AutoTokenizer.from_pretrained(ws / "tokenizer")
    prompts = [r["prompt"] for r in read_jsonl(ws / "data" / "prompts.jsonl")]  # all within max_prompt_length
    meter = RewardMeter()
    clock = StepClock(s["warmup_rollouts"])

    with tempfile.TemporaryDirectory(prefix="compare_trl_grpo_") as output_dir:
        config = grpo_config(s, output_dir)

        class RolloutClock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % args.steps_per_generation == 0:  # the rollout's last minibatch
                    clock.step_end(**meter.take(), **timer.take())

        torch.manual_seed(0)
        trainer = GRPOTrainer(
            model=str(ws / "policy"),
            reward_funcs=meter,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
            callbacks=[RolloutClock()],
        )
        timer = PhaseTimer(generate=(trainer.model, "generate"))  # TRL generates with the unwrapped policy itself
        a = trainer.args
        print(
            f"TRL layout: generation_batch_size {a.generation_batch_size}, per_device_train_batch_size "
            f"{a.per_device_train_batch_size}, steps_per_generation {a.steps_per_generation}, loss {a.loss_type}, "
            f"scale_rewards {a.scale_rewards}, reference model {trainer.ref_model is not None}",
            file=sys.stderr,
        )
        trainer.train()
    emit_result({"framework": "trl", "version": trl.__version__, "stage": "grpo", **clock.measured()})


if __name__ == "__main__":
    main()
