"""Asynchronous rollouts (``batch.max_staleness: 1``) against the synchronous loop: PPO episodes/s with the same
engine, fits alternated in one process. Not a test; prints one line per fit (with the load average) and a summary.

    python benchmarks/async_rollouts.py                                   (the HF worker engine)
    .venv-vllm/bin/python benchmarks/async_rollouts.py --engine vllm     (docs/engines.md, "Installing")

The model is a small Llama (4 layers, 256 wide, the sandbox tokenizer, random weights); plain PPO with a critic,
no ptx. A fit's rate counts the rollouts after its first (engine start and the first, synchronous rollout left out):
episodes / seconds from the end of rollout 1 to the end of the last. ``wait`` is the time the trainer blocked on the
engine at the end of its asynchronous steps: 0 means the update hid the generation completely.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL_LLAMA = dict(
    model_type="llama",
    vocab_size=0,  # the tokenizer's
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    pad_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=True,
)
TOKENIZER = REPO / "lit_rlhf/sandbox/assets/tokenizer"
PROMPTS = REPO / "lit_rlhf/sandbox/assets/data/prompts_train.jsonl"


def fit(dirs: dict[str, str], engine_name: str, max_staleness: int, args) -> tuple[float, float]:
    """(episodes/s after the first rollout, seconds blocked on the engine) of one PPO fit."""
    import lightning as L

    from lit_rlhf.data import PromptDataModule
    from lit_rlhf.engines.async_rollouts import AsyncRollouts
    from lit_rlhf.modules import PPOModule

    if engine_name == "vllm":
        from lit_rlhf.engines.vllm import VLLMEngine

        engine = VLLMEngine(kv_cache_memory_gb=0.25)
    else:
        from lit_rlhf.engines import HFWorkerEngine

        engine = HFWorkerEngine(threads=1)
    ends: list[float] = []
    waited = [0.0]
    module = PPOModule(
        policy=dirs["sft"],
        reward_model=dirs["rm"],
        engine=engine,
        batch={
            "rollout_batch_size": args.episodes,
            "minibatch_size": args.episodes // 2,
            "max_staleness": max_staleness,
        },
        sampling={"max_new_tokens": args.new_tokens},
        correction={"truncated_is_cap": 2.0},
        ptx={"gamma": 0.0},
        ema_decay=None,
        seed=0,
    )
    if module.rollouts_ahead is not None:  # time the trainer's blocking waits on the engine
        ahead: AsyncRollouts = module.rollouts_ahead
        wait = ahead.wait

        def timed_wait() -> None:
            started = time.perf_counter()
            wait()
            waited[0] += time.perf_counter() - started if ends else 0.0

        ahead.wait = timed_wait

    class Clock(L.Callback):
        def on_train_batch_end(self, *unused) -> None:
            ends.append(time.perf_counter())

    data = PromptDataModule(
        prompts=str(PROMPTS), max_prompt_length=64, rollout_batch_size=args.episodes, max_staleness=max_staleness
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2 * args.rollouts,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    try:
        trainer.fit(module, data)
    finally:
        if hasattr(engine, "close"):
            engine.close()
    return (len(ends) - 1) * args.episodes / (ends[-1] - ends[0]), waited[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["hf-worker", "vllm"], default="hf-worker")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of fits (sync, async), alternating who goes first")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=12, help="episodes per rollout")
    parser.add_argument("--new_tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="the trainer's torch threads")
    args = parser.parse_args()

    import torch
    from compare_common import configure_process, write_random_sft_and_rm

    from lit_rlhf.models.loading import load_tokenizer

    configure_process(args.threads)
    torch.manual_seed(0)
    config = {**SMALL_LLAMA, "vocab_size": len(load_tokenizer(str(TOKENIZER)))}
    dirs = write_random_sft_and_rm(tempfile.mkdtemp(), config, str(TOKENIZER))
    rates: dict[str, list[float]] = {"sync": [], "async": []}
    for round_index in range(args.rounds):
        order = ("sync", "async") if round_index % 2 == 0 else ("async", "sync")
        for kind in order:
            rate, waited = fit(dirs, args.engine, int(kind == "async"), args)
            rates[kind].append(rate)
            print(f"{args.engine} {kind}: {rate:.2f} episodes/s, waited {waited:.1f} s, load {os.getloadavg()[0]:.1f}")
    medians = {kind: statistics.median(values) for kind, values in rates.items()}
    print(
        json.dumps({"engine": args.engine, "episodes_per_s": rates, "median_ratio": medians["async"] / medians["sync"]})
    )


if __name__ == "__main__":
    main()
