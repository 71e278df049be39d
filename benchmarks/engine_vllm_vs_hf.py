"""The vLLM rollout engine against the Hugging Face engine: generation tokens/s and PPO episodes/s on a model of
SmolLM2-135M's size (its architecture, randomly initialised) on CPU. Not a test; prints a table.

    .venv-vllm/bin/python benchmarks/engine_vllm_vs_hf.py   (the environment of docs/engines.md, "Installing")
    .venv-vllm/bin/python benchmarks/engine_vllm_vs_hf.py --pairs 3 --ppo_rollouts 5 --vllm_dtype float32

Every measurement is a fresh worker process (this script with a hidden ``--worker``), and the two engines
alternate, vLLM then HF, for ``--pairs`` pairs under the same load: each pair gives one ratio vLLM / HF, the
table shows their min, median and max, and the 1-minute load average before each pair is printed.
Generation: ``--prompts`` prompts x ``--new_tokens`` sampled tokens (T = 1, top-p 1; a random model rarely stops
early, so both engines make the same number of tokens), HF in fp32 (the trainer's own model), vLLM in
``--vllm_dtype``. The vLLM worker also times the trainer's scoring forward that the engine adds back (PPO's ratio
needs the trainer's log-probs) and reports the engine-trainer log-prob mismatch.
PPO: ``PPOModule`` fits (plain PPO, no ptx) with either engine on the same data; a rollout's time is its whole
training step (generate, score, update, weight sync), the first rollout of each fit left out (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
#: each measurement's headline metric
RATE = {"generation": "tokens/s", "ppo": "episodes/s"}

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


def generation_run(dirs: dict[str, str], engine_name: str, args) -> dict[str, float]:
    """Tokens/s of one engine on ``--prompts`` prompts x ``--new_tokens`` tokens (median of ``--repeats`` calls after
    a warm-up call); for vLLM also the trainer's scoring forward as a fraction of the generation time and the
    engine-trainer log-prob mismatch."""
    import torch

    from lit_rlhf.algorithms.engine_mismatch import logprob_mismatch
    from lit_rlhf.engines import SamplingSettings, hf_generate
    from lit_rlhf.engines.vllm import VLLMEngine
    from lit_rlhf.models.loading import load_causal_lm
    from lit_rlhf.modules.rollout import in_chunks, logprobs_and_entropy

    policy = load_causal_lm(dirs["sft"]).eval()
    prompts, tokenizer = prompt_batch(args.prompts)
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0)
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    engine = None
    if engine_name == "vllm":
        engine = VLLMEngine(dtype=args.vllm_dtype, kv_cache_memory_gb=1.0, max_model_len=512)
        engine.setup(policy, dirs["sft"])
        engine.sync_weights(policy)

    def sample():
        if engine is None:
            return hf_generate(policy, prompts, 1, settings, **special)
        return engine.sample(prompts, 1, settings, **special)

    torch.manual_seed(0)
    sample()  # first calls allocate and pick kernels: not measured
    rates, scoring, mismatch = [], [], {}
    for _ in range(args.repeats):
        started = time.perf_counter()
        rollout = sample()
        seconds = time.perf_counter() - started
        rates.append(float(rollout.response_lengths.sum()) / seconds)
        if engine is not None:
            started = time.perf_counter()
            with torch.no_grad():
                trainer_logprobs, _ = in_chunks(rollout, 16, lambda c: logprobs_and_entropy(policy, c, 1.0))
            scoring.append((time.perf_counter() - started) / seconds)
            measured = logprob_mismatch(rollout.engine_logprobs, trainer_logprobs, rollout.response_mask)
            mismatch = {f"mismatch {name}": float(value) for name, value in measured.items()}
    if engine is not None:
        engine.close()
    out = {"tokens/s": statistics.median(rates), **mismatch}
    if scoring:
        out["scoring forward s / generation s"] = statistics.median(scoring)
    return out


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
        VLLMEngine(dtype=args.vllm_dtype, kv_cache_memory_gb=1.0, max_model_len=512) if engine_name == "vllm" else None
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


def run_pairs(kind: str, dirs: Path, args, log: Path) -> list[tuple[dict, dict, float]]:
    """``--pairs`` (vLLM, HF) worker pairs of ``kind``, each run a fresh process, vLLM first; with the 1-minute
    load average before each pair."""
    from compare import parse_result

    pairs = []
    for pair in range(args.pairs):
        load, runs = os.getloadavg()[0], []
        for engine in ("vllm", "hf"):
            command = [
                sys.executable,
                __file__,
                *args.forward,
                "--worker",
                kind,
                "--engine",
                engine,
                "--dirs",
                str(dirs),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            with log.open("a") as f:
                f.write(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}\n")
            if done.returncode:
                sys.exit(f"worker failed (exit {done.returncode}): {' '.join(command)}; full output: {log}")
            runs.append(parse_result(done.stdout))
        pairs.append((runs[0], runs[1], load))
        metric = RATE[kind]
        print(
            f"[{kind} pair {pair + 1}/{args.pairs}, load {load:.1f}] vllm {runs[0][metric]:.3g} vs hf "
            f"{runs[1][metric]:.3g} {metric}",
            flush=True,
        )
    return pairs


def table(kind: str, pairs: list[tuple[dict, dict, float]], args) -> None:
    from compare import spread

    metric = RATE[kind]
    what = (
        f"generation, {args.prompts} prompts x {args.new_tokens} tokens (T = 1)"
        if kind == "generation"
        else f"PPO, {args.ppo_episodes} episodes x {args.new_tokens} tokens per rollout"
    )
    loads = [load for _, _, load in pairs]
    print(
        f"\n{what}; vLLM {args.vllm_dtype}, HF fp32; {len(pairs)} alternating pairs (fresh process per run, "
        f"vLLM first); load average before the pairs {min(loads):.1f}..{max(loads):.1f}\n"
    )
    print("| | vLLM | HF | vLLM / HF min / median / max |")
    print("|---|---|---|---|")
    ratios = [v[metric] / h[metric] for v, h, _ in pairs]
    vllm, hf = ([run[i][metric] for run in pairs] for i in (0, 1))
    print(f"| {metric} | {statistics.median(vllm):.3g} | {statistics.median(hf):.3g} | {spread(ratios)} |")
    for key in sorted(k for k in pairs[0][0] if k != metric and isinstance(pairs[0][0][k], float)):
        values = [v[key] for v, _, _ in pairs]
        print(f"| vLLM {key} | {statistics.median(values):.3g} (min {min(values):.3g}, max {max(values):.3g}) | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="alternated (vLLM, HF) worker pairs per measurement")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="timed generation calls per generation worker")
    parser.add_argument("--ppo_rollouts", type=int, default=4, help="rollouts per fit (the first is warm-up)")
    parser.add_argument("--ppo_episodes", type=int, default=32, help="episodes per rollout")
    parser.add_argument("--vllm_dtype", default="bfloat16", help="the vLLM engine's dtype (the trainer stays fp32)")
    parser.add_argument("--skip_generation", action="store_true")
    parser.add_argument("--skip_ppo", action="store_true")
    parser.add_argument("--worker", choices=sorted(RATE), help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--dirs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one measurement in this fresh process
        from compare_common import emit_result

        dirs = {"sft": str(args.dirs / "sft"), "rm": str(args.dirs / "rm")}
        run = generation_run if args.worker == "generation" else ppo_fit
        emit_result(run(dirs, args.engine, args))
        return
    forwarded = ("prompts", "new_tokens", "repeats", "ppo_rollouts", "ppo_episodes", "vllm_dtype")
    args.forward = [item for name in forwarded for item in (f"--{name}", str(getattr(args, name)))]
    import torch

    print(f"torch threads: {torch.get_num_threads()}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        build_dirs(Path(tmp))
        log = Path(tmp) / "workers.log"
        kinds = [k for k, skip in (("generation", args.skip_generation), ("ppo", args.skip_ppo)) if not skip]
        results = {kind: run_pairs(kind, Path(tmp), args, log) for kind in kinds}
        for kind, pairs in results.items():
            table(kind, pairs, args)


if __name__ == "__main__":  # vLLM starts engine processes: this script must be import-safe
    main()
