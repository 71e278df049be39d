"""The Hugging Face TRL worker of ``compare.py``: SFT, reward-model and DPO training throughput.

Trains the shared workspace (``compare_workspace.py``) with TRL's own ``SFTTrainer``,
``RewardTrainer`` or ``DPOTrainer`` at lit-rlhf's equal settings and TRL's defaults otherwise (what a TRL user gets),
and prints ``RESULT {json}`` as its last stdout line (see ``compare_common.py``). Measured, after the
warm-up steps, per optimizer step:

- ``sft``: ``tokens`` (non-pad tokens forwarded: prompt + completion + eos) and ``sequences``;
- ``rm4`` / ``rm9``: ``comparisons`` (chosen/rejected pairs) and ``sequences`` (two per pair). Every
  pair of the K-wise groups lit-rlhf trains on, ``prompts_per_step * C(K, 2)`` pairs per step;
- ``dpo``: ``pairs`` and ``sequences`` (two per pair), on the very pairs file lit-rlhf's DPO reads.

Dataset preparation (tokenisation) happens when the trainer is built, before the first step.

    python benchmarks/compare_trl.py --stage sft|rm4|rm9|dpo --workspace DIR [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_common import INSTALL, StepClock, configure_process, emit_result  # noqa: E402
from compare_workspace import load_settings  # noqa: E402

MIN_TRL = "1.14"


def import_trl():
    """TRL, or exit 3 with what to install."""
    try:
        import trl
        from packaging.version import Version
        from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer  # noqa: F401

        if Version(trl.__version__) < Version(MIN_TRL):
            raise ImportError(f"trl {trl.__version__} is older than {MIN_TRL}")
    except ImportError as error:
        print(f"compare_trl.py needs TRL >= {MIN_TRL} ({error}); install it with: {INSTALL['trl']}", file=sys.stderr)
        sys.exit(3)
    return trl


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CountingCollator:
    """Wraps the trainer's collator and keeps each collated batch's work counters, in order.

    Accelerate's dataloader collates one batch ahead of the one being trained on, so the counters
    of optimizer step ``n`` (1-based, no gradient accumulation) are ``batches[n - 1]``, not the last.
    """

    def __init__(self, inner, count):
        self.inner, self.count, self.batches = inner, count, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.batches.append(self.count(batch))
        return batch


def sft_counts(batch) -> dict:
    return {
        "tokens": int(batch["attention_mask"].sum()),
        "sequences": int(batch["input_ids"].shape[0]),
        "positions": batch["input_ids"].numel(),
    }


def rm_counts(batch) -> dict:
    # DataCollatorForPreference stacks all chosen sequences, then all rejected ones
    sequences = int(batch["input_ids"].shape[0])
    return {
        "comparisons": sequences // 2,
        "sequences": sequences,
        "tokens": int(batch["attention_mask"].sum()),
        "positions": batch["input_ids"].numel(),
    }


def trainer_arguments(output_dir: str) -> dict:
    """The ``TrainingArguments`` every TRL worker sets to lit-rlhf's values; everything else is left at TRL's
    defaults (logging_steps=10, max_grad_norm=1.0, the trainer's default optimizer implementation, no
    packing/padding-free)."""
    return dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        gradient_accumulation_steps=1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        seed=0,
        dataloader_num_workers=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


def dpo_counts(batch) -> dict:
    # DPO's collator stacks the chosen sequences, then the rejected ones, prompt included
    sequences = int(batch["input_ids"].shape[0])
    return {
        "pairs": sequences // 2,
        "sequences": sequences,
        "tokens": int(batch["attention_mask"].sum()),
        "positions": batch["input_ids"].numel(),
    }


def build_dpo_trainer(workspace: Path, hp: dict, common: dict):
    """TRL's ``DPOTrainer`` on the workspace's pairs: sigmoid loss, the reference's log-probs at every step."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    # TRL tokenizes prompt + completion as one string (and appends eos); the space keeps the words apart, so the
    # ids equal lit-rlhf's tokenize(prompt) + tokenize(response) + [eos]
    records = [
        {"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
        for r in read_jsonl(workspace / "data/dpo_pairs.jsonl")
    ]
    config = DPOConfig(
        **common,
        max_length=hp["max_length"],
        per_device_train_batch_size=hp["batch_size"],
        learning_rate=hp["learning_rate"],
        max_steps=hp["warmup_steps"] + hp["measured_steps"],
        beta=hp["beta"],
        precompute_ref_log_probs=False,
    )
    model = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)
    torch.manual_seed(0)
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    first = trainer.train_dataset[0]
    if tokenizer.unk_token_id in first["prompt_ids"] + first["chosen_ids"] or first["chosen_ids"][-1] != (
        tokenizer.eos_token_id
    ):
        raise RuntimeError(f"TRL tokenised the pairs differently from lit-rlhf: {first}")
    return trainer


def build_trainer(stage: str, workspace: Path, settings: dict, output_dir: str):
    """The TRL trainer of ``stage`` (tokenised data included), its counting collator and warm-up steps."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    tokenizer.padding_side = "right"
    common = trainer_arguments(output_dir)
    torch.manual_seed(0)
    if stage == "dpo":
        hp = settings["dpo"]
        trainer, count = build_dpo_trainer(workspace, hp, common), dpo_counts
    elif stage == "sft":
        hp = settings["sft"]
        # TRL joins prompt + completion as strings; the space keeps the word-level tokens apart, so the
        # ids equal lit-rlhf's tokenize(prompt) + tokenize(response) + [eos] (TRL appends eos itself).
        records = [
            {"prompt": r["prompt"], "completion": " " + r["response"]} for r in read_jsonl(workspace / "data/sft.jsonl")
        ]
        model = AutoModelForCausalLM.from_pretrained(workspace / "policy", dtype=torch.float32)
        config = SFTConfig(
            **common,
            max_length=hp["max_length"],
            per_device_train_batch_size=hp["batch_size"],
            learning_rate=hp["learning_rate"],
            max_steps=hp["warmup_steps"] + hp["measured_steps"],
            packing=False,
            padding_free=False,
        )
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(records), processing_class=tokenizer
        )
        count = sft_counts
    else:
        hp, k = settings["rm"], stage[2:]
        # Explicit-prompt preference format: TRL scores prompt + chosen + eos and prompt + rejected + eos
        records = [
            {"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
            for r in read_jsonl(workspace / f"data/rm_k{k}_pairs.jsonl")
        ]
        model = AutoModelForSequenceClassification.from_pretrained(
            workspace / "reward", num_labels=1, dtype=torch.float32
        )
        pairs = hp["prompts_per_step"][k] * int(k) * (int(k) - 1) // 2
        config = RewardConfig(
            **common,
            max_length=hp["max_length"],
            per_device_train_batch_size=pairs,
            learning_rate=hp["learning_rate"],
            max_steps=hp["warmup_steps"] + hp["measured_steps"][k],
        )
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(records), processing_class=tokenizer
        )
        if len(trainer.train_dataset) != len(records):  # TRL drops (not truncates) pairs over max_length
            raise RuntimeError(f"TRL dropped {len(records) - len(trainer.train_dataset)} pairs over max_length")
        count = rm_counts
    collator = CountingCollator(trainer.data_collator, count)
    trainer.data_collator = collator  # read when train() builds the dataloader
    return trainer, collator, hp["warmup_steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["sft", "rm4", "rm9", "dpo"], required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_process(args.threads)
    trl = import_trl()
    from transformers import TrainerCallback

    settings = load_settings(args.workspace)
    with tempfile.TemporaryDirectory(prefix="compare_trl_") as output_dir:
        trainer, collator, warmup_steps = build_trainer(args.stage, args.workspace, settings, output_dir)
        clock = StepClock(warmup_steps)

        class Clock(TrainerCallback):
            def on_step_end(self, train_args, state, control, **kwargs):
                clock.step_end(**collator.batches[state.global_step - 1])

        trainer.add_callback(Clock())
        trainer.train()
    emit_result({"framework": "trl", "version": trl.__version__, "stage": args.stage, **clock.measured()})


if __name__ == "__main__":
    main()
