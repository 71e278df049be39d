"""The SmolLM2-135M recipe's PPO stage with LoRA on the policy and the value model, from a finished recipe run's
SFT and RM, evaluated as the recipe's report evaluates its policies (docs/recipes.md).

    lit-rlhf sandbox run --config configs/recipes/smollm2-135m/pipeline.yaml --seed 0 --out runs/smollm2-135m-seed0
    python benchmarks/smollm2_lora_ppo.py --run runs/smollm2-135m-seed0 --seed 0

Writes <run>-lora/ppo (the merged policy in <run>-lora/ppo/model) and prints the wall time, the peak memory of
the PPO process, the gold score (100 held-out prompts, 2 samples at T = 1, and greedy) and the probe's KL to SFT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lit_rlhf.sandbox.pipeline import fit, probe_callback
from lit_rlhf.sandbox.report import PROBE, gold_metrics, last_value, read_csv_metrics

RECIPE = Path(__file__).resolve().parents[1] / "configs/recipes/smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", required=True, help="output directory of a finished recipe run (holds sft/model and rm/model)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--learning_rate", type=float, default=1e-4, help="policy LR (LoRA: 5x the recipe's full fine-tuning LR)"
    )
    parser.add_argument("--value_learning_rate", type=float, default=2e-4)
    args = parser.parse_args()

    run = Path(args.run)
    out = Path(f"{run}-lora") / "ppo"
    cost = fit(
        str(RECIPE / "ppo.yaml"),
        out,
        "ppo_lora",
        [
            "--seed_everything",
            str(args.seed),
            "--model.init_args.policy",
            str(run / "sft/model"),
            "--model.init_args.reward_model",
            str(run / "rm/model"),
            "--model.init_args.ptx.gamma",
            "0",
            "--model.init_args.lora",
            "{r: 16, alpha: 32, target_modules: all-linear, export: merged}",
            "--model.init_args.optimizer.learning_rate",
            str(args.learning_rate),
            "--model.init_args.value.learning_rate",
            str(args.value_learning_rate),
        ],
        wandb=False,
        callbacks=[probe_callback(32, 10)],
    )
    metrics = gold_metrics(str(out / "model"), num_prompts=100, num_texts=100, samples_per_prompt=2, max_new_tokens=24)
    kl = last_value(read_csv_metrics(out / "csv/metrics.csv"), f"{PROBE}/kl")
    print(
        json.dumps(
            {
                "wall_min": round(cost.wall_s / 60, 1),
                "peak_rss_gib": round(cost.peak_rss_gib, 2),
                "kl_to_sft": kl,
                "gold": round(metrics["gold/score"], 3),
                "gold_greedy": round(metrics["gold_greedy/score"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
