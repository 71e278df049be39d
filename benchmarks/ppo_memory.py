"""Peak memory per process of PPO on a >=100M-parameter model (random init): 1 vs 2 processes under
FSDP2, with and without LoRA. Not a test; prints a table.

    python benchmarks/ppo_memory.py                 # CPU (gloo) or GPUs, whatever is there
    python benchmarks/ppo_memory.py --rollouts 2

Each configuration runs in its own torchrun job (fresh processes, so peaks do not mix). On GPUs the
peak is ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set size, with glibc's
mmap threshold fixed so that freed tensors leave the resident set (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

#: ~110M parameters: a GPT-2-small-sized Llama.
MODEL = dict(
    model_type="llama",
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    max_position_embeddings=512,
    pad_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=True,
)
CONFIGS = [(1, False), (2, False), (1, True), (2, True)]  # (processes, lora)


def build_inputs(root: Path) -> None:
    """SFT and RM directories with the benchmark model (random init), a tokenizer and prompts."""
    from compare_common import write_random_sft_and_rm
    from conftest import build_char_tokenizer

    build_char_tokenizer(root / "tokenizer")
    write_random_sft_and_rm(root, MODEL, str(root / "tokenizer"))
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"prompt number {i}:"}) + "\n" for i in range(64))
    )


def worker(root: Path, lora: bool, rollouts: int) -> None:
    """One process of a torchrun job: PPO for ``rollouts`` rollouts, then report this rank's peak memory."""
    import torch
    from lightning.pytorch import Trainer, seed_everything

    from lit_rlhf.data import PromptDataModule
    from lit_rlhf.distributed.strategies import FSDP2Strategy
    from lit_rlhf.lora import LoraOptions
    from lit_rlhf.modules import PPOModule

    seed_everything(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    module = PPOModule(
        policy=str(root / "sft"),
        reward_model=str(root / "rm"),
        batch={"rollout_batch_size": 8, "minibatch_size": 4, "micro_batch_size": 4},
        sampling={"max_new_tokens": 32},
        ema_decay=None,
        ptx={"gamma": 0.0},
        optimizer={"warmup_steps": 1},
        lora=LoraOptions(r=16, alpha=32.0, target_modules="all-linear") if lora else None,
    )
    data = PromptDataModule(prompts=str(root / "prompts.jsonl"), max_prompt_length=32, rollout_batch_size=8)
    gpu = torch.cuda.is_available()
    trainer = Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=world,
        strategy=FSDP2Strategy() if world > 1 else "auto",
        max_steps=rollouts,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (root / f"peak_{world}_{int(lora)}_{trainer.global_rank}.json").write_text(json.dumps(peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "LORA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1] == "1", args.rollouts)
        return
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    # On CPU the peak resident size otherwise measures glibc's allocator, not tensors: after large
    # blocks are freed it raises its mmap threshold and keeps later ones on the heap (measured: FSDP2
    # 2 ranks 5.3 GiB by default, 3.1 GiB with a fixed threshold). A fixed threshold returns freed
    # tensors to the OS, so every configuration is measured alike.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    root = Path(tempfile.mkdtemp(prefix="ppo_memory_"))
    build_inputs(root)
    rows = []
    for processes, lora in CONFIGS:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            __file__,
            "--rollouts",
            str(args.rollouts),
            "--worker",
            str(root),
            str(int(lora)),
        ]
        subprocess.run(command, check=True, cwd=REPO)
        peaks = [json.loads((root / f"peak_{processes}_{int(lora)}_{r}.json").read_text()) for r in range(processes)]
        rows.append((processes, "FSDP2" if processes > 1 else "single", "LoRA" if lora else "full", max(peaks)))
    print(f"\n{'processes':>9} | {'strategy':>8} | {'training':>8} | peak memory per process")
    for processes, strategy, training, peak in rows:
        print(f"{processes:>9} | {strategy:>8} | {training:>8} | {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
