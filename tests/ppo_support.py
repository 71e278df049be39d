"""Shared pieces of the PPO tests: tiny SFT and RM directories, data files, and a quick Trainer.

Import the fixtures into a test module to use them: ``from ppo_support import one_cpu_thread, ppo_world``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_rlhf.models.heads import set_reward_bias
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory

REWARD_BIAS = 0.25
#: Module settings that make one rollout a fraction of a second: 4 episodes, 2 optimizer steps.
TINY = dict(
    rollout_batch_size=4,
    minibatch_size=2,
    micro_batch_size=2,
    max_new_tokens=6,
    warmup_rollouts=2,
    learning_rate=3e-3,
    value_learning_rate=3e-3,
    ema_decay=0.5,
    gamma_ptx=1.0,
    ptx_micro_batch_size=4,
)


def build_world(root: Path, tiny_dir: Path) -> dict[str, str]:
    """An SFT directory (random tiny Llama + char tokenizer), an RM directory from it, and data files."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tiny_dir / "tokenizer"))
    policy = load_causal_lm(str(tiny_dir / "config.json"))
    save_hf_directory(policy, tokenizer, root / "sft")
    reward = load_scalar_model(str(root / "sft"))
    set_reward_bias(reward, REWARD_BIAS)
    save_hf_directory(reward, tokenizer, root / "rm")
    rng = random.Random(0)
    letters = "abcdefgh"
    with open(root / "prompts.jsonl", "w") as f:
        for _ in range(12):
            f.write(json.dumps({"prompt": f"sort {' '.join(rng.sample(letters, 3))}:"}) + "\n")
    (root / "ptx.txt").write_text(
        "".join(f"the letters {' '.join(rng.sample(letters, 4))} are here\n" for _ in range(40))
    )
    (root / "heldout.txt").write_text("".join(f"held out {' '.join(rng.sample(letters, 3))}\n" for _ in range(8)))
    return {name: str(root / name) for name in ("sft", "rm", "prompts.jsonl", "ptx.txt", "heldout.txt")}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One torch thread per test module: tiny models gain nothing from more, and on a busy machine extra
    threads spin-wait for cores (a tiny PPO fit went from 1 s to 25 s with two threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ppo_world(tmp_path_factory, tiny_dir) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("ppo_world"), tiny_dir)


def grouped(**settings) -> dict:
    """PPOModule keyword arguments from flat keys (``kl_coef=...``): each moved key (``lit_rlhf.settings.MOVED_KEYS``)
    goes into its group (``kl={"coef": ...}``); group mappings given as such are merged; other keys stay flat."""
    from lit_rlhf.settings import MOVED_KEYS

    arguments: dict = {}
    for key, value in settings.items():
        if key in MOVED_KEYS:
            group, field = MOVED_KEYS[key].split(".")
            arguments.setdefault(group, {})[field] = value
        elif isinstance(value, dict) and key in arguments:
            arguments[key].update(value)
        else:
            arguments[key] = dict(value) if isinstance(value, dict) else value
    return arguments


def tiny_module(world: dict[str, str], cls=None, **overrides):
    from lit_rlhf.modules import PPOModule

    return (cls or PPOModule)(policy=world["sft"], reward_model=world["rm"], **grouped(**{**TINY, **overrides}))


def tiny_data(world: dict[str, str], module=None, **overrides):
    """The tiny prompt data, its batch sizes those of ``module`` (a PPOModule; default: TINY's)."""
    from lit_rlhf.data import PromptDataModule

    batch = module.batch if module is not None else None
    sizes = (
        dict(
            rollout_batch_size=batch.rollout_batch_size,
            samples_per_prompt=batch.samples_per_prompt,
            max_staleness=batch.max_staleness,
        )
        if batch
        else dict(rollout_batch_size=TINY["rollout_batch_size"])
    )
    settings = dict(
        prompts=world["prompts.jsonl"],
        ptx_text=world["ptx.txt"],
        ptx_ratio=2,
        max_prompt_length=32,
        max_ptx_length=32,
        **sizes,
    )
    return PromptDataModule(**{**settings, **overrides})


def tiny_trainer(root: Path, **overrides) -> L.Trainer:
    settings = dict(
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        max_epochs=1,
        accelerator="cpu",
    )
    return L.Trainer(**{**settings, **overrides})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], p.detach()) for name, p in model.named_parameters())


#: One global rollout of 8 episodes with responses of different lengths (EOS = 1 ends each; 0 pads after it).
FIXED_PROMPTS = torch.tensor([[40 + (3 * i + j) % 30 for j in range(4)] for i in range(8)])
FIXED_RESPONSES = torch.tensor(
    [
        [50, 1, 0, 0, 0, 0],
        [51, 52, 53, 54, 55, 56],
        [57, 1, 0, 0, 0, 0],
        [58, 59, 60, 1, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [61, 62, 63, 64, 65, 1],
        [66, 67, 1, 0, 0, 0],
        [68, 69, 70, 71, 72, 73],
    ]
)


def fixed_rollout_module(world: dict[str, str], **overrides):
    """A PPOModule whose rollouts are rank ``r``'s contiguous share of FIXED_PROMPTS/FIXED_RESPONSES, whatever the
    prompts: the same global rollout however it is split over micro-batches and ranks."""
    from lit_rlhf.episodes import concat_responses
    from lit_rlhf.modules import PPOModule

    class FixedRolloutPPO(PPOModule):
        def generate_rollout(self, prompts, *, model, num_samples=1):
            n = len(prompts["input_ids"]) * num_samples
            rows = slice(self.global_rank * n, (self.global_rank + 1) * n)
            ids = FIXED_PROMPTS[rows].to(self.device)
            return concat_responses(ids, torch.ones_like(ids), FIXED_RESPONSES[rows].to(self.device), eos_token_id=1)

    settings = dict(
        TINY,
        rollout_batch_size=8,
        minibatch_size=8,
        micro_batch_size=8,
        ppo_epochs=1,
        max_new_tokens=6,
        max_grad_norm=None,
        ema_decay=None,
    )
    return FixedRolloutPPO(policy=world["sft"], reward_model=world["rm"], **grouped(**{**settings, **overrides}))


class GradientRecorder(L.Callback):
    """The full gradient of every trained parameter at each optimizer step (gathered when sharded)."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {}
        for name, p in pl_module.named_parameters():
            if p.grad is not None:
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                grads[name] = grad.detach().clone().cpu()
        self.steps.append(grads)
