"""Runs SFT/RM (and PPO) scenarios for the distributed tests, in one process or under torchrun.

    torchrun --nproc_per_node 2 tests/dist_support.py SPEC.json   (every rank runs every scenario)

SPEC is ``{"inputs": dir, "out": dir, "scenarios": [{"name", "stage", "strategy", "steps", "lora"}...]}``.
Each scenario writes ``<out>/<name>/losses_rank<r>.json`` and exports to ``<out>/<name>/model``.
Batches are dealt contiguously (rank r takes rows [r*b, (r+1)*b) of each global batch of world*b
rows), so a 1-process run with batch world*b sees the same global batches in the same order.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, Sampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_rlhf.data.comparisons import RewardDataModule  # noqa: E402
from lit_rlhf.data.sft import SFTDataModule  # noqa: E402
from lit_rlhf.distributed.strategies import HFFSDPStrategy  # noqa: E402
from lit_rlhf.lora import LoraOptions  # noqa: E402
from lit_rlhf.modules.reward import RewardModule  # noqa: E402
from lit_rlhf.modules.sft import SFTModule  # noqa: E402
from lit_rlhf.settings import OptimizerSettings  # noqa: E402

#: Rows per rank per step; a single-process run uses GLOBAL_BATCH.
BATCH_PER_RANK = 2
WORLD = 2
GLOBAL_BATCH = BATCH_PER_RANK * WORLD


class ContiguousShards(Sampler[int]):
    """Rank ``rank``'s rows of each consecutive global batch, in order (no shuffling)."""

    def __init__(self, num_rows: int, batch_per_rank: int, rank: int, world: int):
        self.num_rows, self.batch, self.rank, self.world = num_rows, batch_per_rank, rank, world

    def __iter__(self):
        global_batch = self.batch * self.world
        for start in range(0, self.num_rows - global_batch + 1, global_batch):
            yield from range(start + self.rank * self.batch, start + (self.rank + 1) * self.batch)

    def __len__(self) -> int:
        return self.num_rows // (self.batch * self.world) * self.batch


def ordered_loader(rows: list, collate, trainer: Trainer) -> DataLoader:
    world = trainer.world_size
    sampler = ContiguousShards(len(rows), GLOBAL_BATCH // world, trainer.global_rank, world)
    return DataLoader(rows, batch_size=GLOBAL_BATCH // world, sampler=sampler, collate_fn=collate)


class OrderedSFTData(SFTDataModule):
    def train_dataloader(self) -> DataLoader:
        return ordered_loader(self.train_rows, self._collate(), self.trainer)


class OrderedRewardData(RewardDataModule):
    def train_dataloader(self) -> DataLoader:
        return ordered_loader(self.train_groups, self._collate(), self.trainer)


class LossRecorder(Callback):
    """Each rank's training loss per step, written to ``losses_rank<r>.json`` at the end of fit."""

    def __init__(self, out: Path):
        self.out, self.losses = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # PPO optimises by hand and returns nothing: record the optimizer steps made instead.
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        self.losses.append(float(loss) if loss is not None else float(trainer.global_step))

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"losses_rank{trainer.global_rank}.json").write_text(json.dumps(self.losses))


class StalenessRecorder(Callback):
    """Each rank's ``[policy version updated, versions that sampled its episodes]`` per PPO rollout, written to
    ``staleness_rank<r>.json`` at the end of fit."""

    def __init__(self, out: Path):
        self.out, self.rows = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lit_rlhf.episodes import RolloutSummary

        summary = RolloutSummary.from_outputs(outputs)
        self.rows.append([summary.index - 1, summary.episodes.policy_versions.tolist()])

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"staleness_rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))


class FirstStepGradients(Callback):
    """Rank 0 writes the full gradients of the first optimizer step to ``grads.pt`` (gathered when sharded)."""

    def __init__(self, out: Path):
        from ppo_support import GradientRecorder

        self.out, self.recorder = out, GradientRecorder()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.recorder.steps:
            self.recorder.on_before_optimizer_step(trainer, pl_module, optimizer)  # a collective under FSDP2

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save(self.recorder.steps[0], self.out / "grads.pt")


class CPUFSDPStrategy(HFFSDPStrategy):
    """Test-only: Lightning 2.6.6 builds FSDP1 with ``device_id=None`` on CPU, which torch refuses; pass the CPU
    device."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        self.resolve_layer_policies(model)
        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def strategy_from_yaml(name: str):
    """The strategy of ``configs/strategy/<name>.yaml``, built the way LightningCLI builds it."""
    if name == "single":
        return "auto"
    spec = yaml.safe_load((REPO / "configs" / "strategy" / f"{name}.yaml").read_text())["trainer"]["strategy"]
    if isinstance(spec, str):
        return spec
    module_name, class_name = spec["class_path"].rsplit(".", 1)
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    cls = CPUFSDPStrategy if cls is HFFSDPStrategy else cls
    return cls(**(spec.get("init_args") or {}))


def build(
    stage: str, root: Path, out: Path, lora: bool, uneven: bool = False, devices: int = 1, async_rollouts: bool = False
):
    lora_options = LoraOptions(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]) if lora else None
    common = {"tokenizer": str(root / "tokenizer"), "lora": lora_options, "output_dir": str(out / "model")}
    if stage == "sft":
        module = SFTModule(model=str(root / "init_lm"), optimizer=OptimizerSettings(learning_rate=1e-3), **common)
        data = OrderedSFTData(
            train=str(root / "sft.jsonl"), max_length=64, batch_size=GLOBAL_BATCH, group_by_length=False
        )
    elif stage == "rm":
        module = RewardModule(model=str(root / "init_lm"), optimizer=OptimizerSettings(learning_rate=1e-3), **common)
        data = OrderedRewardData(
            train=str(root / "rm.jsonl"), center_on=str(root / "sft.jsonl"), max_length=64, batch_size=GLOBAL_BATCH
        )
    elif stage == "ppo-exact":
        from ppo_support import fixed_rollout_module, tiny_data

        # The same global rollout of 8 episodes: 8 on one device, or 4 per rank (split in micro-batches of 1).
        world = {name: str(root / "ppo" / name) for name in ("sft", "rm", "prompts.jsonl", "ptx.txt", "heldout.txt")}
        per_device = 8 // devices
        module = fixed_rollout_module(
            world,
            rollout_batch_size=per_device,
            minibatch_size=per_device,
            micro_batch_size=1 if devices > 1 else 8,
            ptx_micro_batch_size=1 if devices > 1 else 4,
        )
        data = tiny_data(world, module, ptx_ratio=0.5)
    elif stage == "ppo":
        from ppo_support import TINY, grouped, tiny_data

        from lit_rlhf.modules import PPOModule

        world = {name: str(root / "ppo" / name) for name in ("sft", "rm", "prompts.jsonl", "ptx.txt", "heldout.txt")}
        cls = _uneven_length_ppo() if uneven else PPOModule
        settings = dict(TINY)
        if async_rollouts:  # 3 rollouts of 2 prompts per rank in each epoch of 12 prompts: 2 of them sampled ahead
            from lit_rlhf.engines.hf_worker import HFWorkerEngine

            settings.update(rollout_batch_size=2, minibatch_size=2, batch={"max_staleness": 1}, engine=HFWorkerEngine())
            settings["correction"] = {"truncated_is_cap": 2.0}
        module = cls(
            policy=world["sft"],
            reward_model=world["rm"],
            lora=lora_options,
            output_dir=str(out / "model"),
            **grouped(**settings),
        )
        data = tiny_data(world, module)
    else:
        raise ValueError(f"unknown stage {stage}")
    return module, data


def run_scenario(inputs: Path, out_root: Path, scenario: dict, devices: int) -> None:
    seed_everything(0)
    out = out_root / scenario["name"]
    async_rollouts = scenario.get("async", False)
    module, data = build(
        scenario["stage"],
        inputs,
        out,
        scenario.get("lora", False),
        scenario.get("uneven", False),
        devices,
        async_rollouts=async_rollouts,
    )
    callbacks = [LossRecorder(out)] + ([StalenessRecorder(out)] if async_rollouts else [])
    if scenario["stage"] == "ppo-exact":
        callbacks.append(FirstStepGradients(out))
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy_from_yaml(scenario["strategy"]),
        precision="32-true",
        max_steps=scenario["steps"],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=scenario["stage"].startswith("ppo"),
        callbacks=callbacks,
    )
    try:
        trainer.fit(module, datamodule=data)
    finally:
        if async_rollouts:
            module.engine.close()  # the HF worker process


def _uneven_length_ppo():
    from lit_rlhf.modules import PPOModule

    class UnevenLengthPPO(PPOModule):
        """Rank 0 generates 1 token per response, rank 1 up to 6: sharded generation must not hang."""

        def on_fit_start(self) -> None:
            super().on_fit_start()
            self.hparams.max_new_tokens = 1 if self.global_rank == 0 else 6

    return UnevenLengthPPO


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    devices = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    for scenario in spec["scenarios"]:
        run_scenario(Path(spec["inputs"]), Path(spec["out"]), scenario, devices)


if __name__ == "__main__":
    main(sys.argv[1])
