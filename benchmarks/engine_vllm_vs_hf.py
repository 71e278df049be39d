"""The vLLM rollout engine against the Hugging Face engine: generation tokens/s and PPO episodes/s on a model of
SmolLM2-135M's size (its architecture, randomly initialised) on CPU, runs alternated. Not a test; prints a table.

    .venv-vllm/bin/python benchmarks/engine_vllm_vs_hf.py   (the environment of docs/engines.md, "Installing")
    .venv-vllm/bin/python benchmarks/engine_vllm_vs_hf.py --rounds 3 --ppo_rollouts 5

Generation: ``--prompts`` prompts x ``--new_tokens`` sampled tokens (T = 1, top-p 1; a random model rarely stops
early, so both engines make the same number of tokens), alternating HF (fp32, the trainer's own model) with vLLM in
fp32 and bf16. For the vLLM rollouts the script also times the trainer's scoring forward that the engine adds back
(PPO's ratio needs the trainer's log-probs) and reports the engine-trainer log-prob mismatch.
PPO: ``PPOModule`` fits (plain PPO, no ptx) with either engine on the same data, alternated; a rollout's time is
its whole training step (generate, score, update, weight sync), the first rollout of each fit left out (warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: SmolLM2-135M's architecture (Llama, 30 layers, 9 heads / 3 KV heads, 576 wide, 49152 vocab), random weights.
SMOLLM2_135M = dict(
    model_type="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    pad_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=True,
)
TOKENIZER = REPO / "lit_rlhf/sandbox/assets/tokenizer"
PROMPTS = REPO / "lit_rlhf/sandbox/assets/data/prompts_train.jsonl"


def build_dirs(root: Path) -> dict[str, str]:
    """SmolLM2-135M's architecture with random weights, as the SFT policy and the RM."""
    from compare_common import write_random_sft_and_rm

    return write_random_sft_and_rm(root, SMOLLM2_135M, str(TOKENIZER))


def prompt_batch(n: int):
    from lit_rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(TOKENIZER))
    texts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()[:n]]
    return dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")), tokenizer


def generation_rounds(dirs: dict[str, str], args) -> dict[str, list[float]]:
    import torch

    from lit_rlhf.algorithms.engine_mismatch import logprob_mismatch
    from lit_rlhf.engines import SamplingSettings, hf_generate
    from lit_rlhf.engines.vllm import VLLMEngine
    from lit_rlhf.models.loading import load_causal_lm
    from lit_rlhf.modules.rollout import in_chunks, logprobs_and_entropy

    policy = load_causal_lm(dirs["sft"]).eval()
    engines = {}
    for dtype in ("float32", "bfloat16"):
        engines[dtype] = VLLMEngine(dtype=dtype, kv_cache_memory_gb=1.0, max_model_len=512)
        engines[dtype].setup(policy, dirs["sft"])
        engines[dtype].sync_weights(policy)
    prompts, tokenizer = prompt_batch(args.prompts)
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0)
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    warm_up = {k: v[:2] for k, v in prompts.items()}
    hf_generate(policy, warm_up, 1, settings, **special)  # first calls allocate and pick kernels: not measured
    for engine in engines.values():
        engine.sample(warm_up, 1, settings, **special)
    results: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        torch.manual_seed(round_index)
        started = time.perf_counter()
        rollout = hf_generate(policy, prompts, 1, settings, **special)
        results.setdefault("hf fp32 tokens/s", []).append(
            float(rollout.response_lengths.sum()) / (time.perf_counter() - started)
        )
        for dtype, engine in engines.items():
            started = time.perf_counter()
            rollout = engine.sample(prompts, 1, settings, **special)
            engine_logprobs = rollout.engine_logprobs
            seconds = time.perf_counter() - started
            results.setdefault(f"vllm {dtype} tokens/s", []).append(float(rollout.response_lengths.sum()) / seconds)
            started = time.perf_counter()
            with torch.no_grad():
                trainer_logprobs, _ = in_chunks(rollout, 16, lambda c: logprobs_and_entropy(policy, c, 1.0))
            results.setdefault(f"vllm {dtype} scoring forward s / generation s", []).append(
                (time.perf_counter() - started) / seconds
            )
            for name, value in logprob_mismatch(engine_logprobs, trainer_logprobs, rollout.response_mask).items():
                results.setdefault(f"vllm {dtype} mismatch {name}", []).append(float(value))
        print(
            f"generation round {round_index}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()), flush=True
        )
    for engine in engines.values():
        engine.close()
    return results


def ppo_fit(dirs: dict[str, str], engine_name: str, args) -> dict[str, float]:
    import lightning as L
    import torch

    from lit_rlhf.data import PromptDataModule
    from lit_rlhf.engines.vllm import VLLMEngine
    from lit_rlhf.episodes import RolloutSummary
    from lit_rlhf.modules import PPOModule

    class StepTimes(L.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.seconds.append(time.perf_counter() - self.started)
            self.engine_metrics = {
                k: v for k, v in RolloutSummary.from_outputs(outputs).metrics.items() if k.startswith("engine/")
            }

    engine = (
        VLLMEngine(dtype=args.ppo_engine_dtype, kv_cache_memory_gb=1.0, max_model_len=512)
        if engine_name == "vllm"
        else None
    )
    half = args.ppo_episodes // 2
    module = PPOModule(
        policy=dirs["sft"],
        reward_model=dirs["rm"],
        engine=engine,
        batch={"rollout_batch_size": args.ppo_episodes, "minibatch_size": half, "micro_batch_size": half},
        sampling={"max_new_tokens": args.new_tokens},
        ptx={"gamma": 0.0},
        ema_decay=None,
        optimizer={"warmup_steps": 1},
        seed=0,
    )
    data = PromptDataModule(prompts=str(PROMPTS), max_prompt_length=64, rollout_batch_size=args.ppo_episodes)
    times = StepTimes()
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=args.ppo_rollouts,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[times],
    )
    trainer.fit(module, datamodule=data)
    steady = times.seconds[1:]  # the first rollout warms up (and, with vLLM, syncs the directory's weights away)
    out = {"episodes/s": args.ppo_episodes / statistics.mean(steady)}
    out.update({k: float(v) for k, v in times.engine_metrics.items()})
    if engine is not None:
        engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternated generation rounds")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--ppo_pairs", type=int, default=2, help="alternated (HF fit, vLLM fit) pairs")
    parser.add_argument("--ppo_rollouts", type=int, default=4, help="rollouts per fit (the first is warm-up)")
    parser.add_argument("--ppo_episodes", type=int, default=32, help="episodes per rollout")
    parser.add_argument("--ppo_engine_dtype", default="bfloat16", help="the vLLM engine's dtype in the PPO fits")
    parser.add_argument("--skip_generation", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_dirs(Path(tmp))
        if not args.skip_generation:
            generation = generation_rounds(dirs, args)
            print("\n| generation (%d prompts x %d tokens) | median | min | max |" % (args.prompts, args.new_tokens))
            print("|---|---|---|---|")
            for name, values in generation.items():
                print(f"| {name} | {statistics.median(values):.4g} | {min(values):.4g} | {max(values):.4g} |")
            hf = generation["hf fp32 tokens/s"]
            for dtype in ("float32", "bfloat16"):
                ratios = [v / h for v, h in zip(generation[f"vllm {dtype} tokens/s"], hf)]
                print(
                    f"| vllm {dtype} / hf fp32 generation | {statistics.median(ratios):.2f}x | {min(ratios):.2f}x | "
                    f"{max(ratios):.2f}x |"
                )
        ppo: dict[str, list[dict[str, float]]] = {"hf": [], "vllm": []}
        for pair in range(args.ppo_pairs):
            for name in ("hf", "vllm"):
                ppo[name].append(ppo_fit(dirs, name, args))
                print(f"ppo pair {pair} {name}: {ppo[name][-1]}", flush=True)
        if args.ppo_pairs:
            ratios = [v["episodes/s"] / h["episodes/s"] for v, h in zip(ppo["vllm"], ppo["hf"])]
            print(
                f"\n| PPO ({args.ppo_episodes} episodes x {args.new_tokens} tokens, vLLM {args.ppo_engine_dtype}) | "
                "median | min | max |"
            )
            print("|---|---|---|---|")
            for name in ("hf", "vllm"):
                values = [r["episodes/s"] for r in ppo[name]]
                print(
                    f"| {name} episodes/s | {statistics.median(values):.3g} | {min(values):.3g} | {max(values):.3g} |"
                )
            print(
                f"| vllm / hf episodes/s | {statistics.median(ratios):.2f}x | {min(ratios):.2f}x | {max(ratios):.2f}x |"
            )
            for key in sorted(k for k in ppo["vllm"][0] if k.startswith("engine/")):
                values = [r[key] for r in ppo["vllm"]]
                print(
                    f"| vllm {key} (last rollout) | {statistics.median(values):.3g} | {min(values):.3g} | "
                    f"{max(values):.3g} |"
                )


if __name__ == "__main__":  # vLLM starts engine processes: this script must be import-safe
    main()
