"""What every stage's DataModule shares: the tokenizer it uses, train/val splitting, and counters."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.batching import LengthGroupedSampler, ResumableDataLoader, ResumableSampler, ShuffledSampler
from lit_rlhf.data.records import DataSource, FieldMap, Record, read_records
from lit_rlhf.errors import ConfigError, check_option
from lit_rlhf.models.loading import load_tokenizer
from lit_rlhf.random_state import rng_states, set_rng_states


def resolve_tokenizer(
    datamodule: Any, source: Optional[str], *, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """The DataModule's own tokenizer if configured, else the LightningModule's.

    Taking the module's tokenizer by default keeps one source of truth in YAML: the model path.
    """
    if source:
        return load_tokenizer(source, padding_side=padding_side)
    trainer = getattr(datamodule, "trainer", None)
    module = trainer.lightning_module if trainer is not None else None
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"{type(datamodule).__name__} needs a tokenizer: set `tokenizer` on the data module, or attach it to a "
            "Trainer whose LightningModule has a `tokenizer` attribute (every lit-rlhf module has one)."
        )
    return tokenizer


def resolve_seed(seed: Optional[int]) -> int:
    """``seed``, or when unset the run's ``seed_everything`` value (Lightning exports it as
    ``PL_GLOBAL_SEED``; LightningCLI seeds before it builds the modules), else 0."""
    return seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))


#: Allowed ranges of the numeric options of every data module, checked at construction: option -> check_option kwargs.
OPTION_RANGES: dict[str, dict[str, Any]] = {
    "batch_size": {"min": 1, "integer": True},
    "val_batch_size": {"min": 1, "integer": True},
    "max_length": {"min": 1, "integer": True},
    "max_prompt_length": {"min": 1, "integer": True},
    "max_ptx_length": {"min": 1, "integer": True},
    "num_workers": {"min": 0, "integer": True},
    "val_fraction": {"min": 0, "max": 1, "max_open": True},
    "ptx_ratio": {"min": 0},
    "seed": {"min": 0, "integer": True},
}


class StageDataModule(LightningDataModule):
    """What every stage's DataModule shares: its hyperparameters, field names, seed and tokenizer source.

    Subclasses call ``super().__init__(tokenizer, fields, seed)`` first; Lightning collects the
    subclass's own arguments into ``hparams`` too. The tokenizer is left out of ``hparams`` because the
    LightningModule logs it: one value per key.
    """

    def __init__(self, tokenizer: Optional[str], fields: Optional[dict[str, str]], seed: Optional[int]):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        for name, allowed in OPTION_RANGES.items():  # fail now, not after the model is built
            if name in self.hparams:
                check_option(f"data.{name}", self.hparams[name], **allowed)
        if self.hparams.get("val") is not None and self.hparams.get("val_fraction"):
            raise ConfigError(
                "data.val and data.val_fraction are both set; give a validation file or a fraction, not both"
            )
        self.hparams.seed = resolve_seed(seed)
        self.tokenizer_source = tokenizer
        self.fields = FieldMap(fields or {})
        self.tokenizer: Optional[PreTrainedTokenizerBase] = None
        self._train_loaders: dict[str, ResumableDataLoader] = {}
        self._positions_to_load: dict[str, dict] = {}

    def train_loader(
        self,
        items: Sequence,
        batch_size: int,
        collate: Callable,
        *,
        lengths: Optional[Sequence[int]] = None,
        num_workers: int = 0,
    ) -> ResumableDataLoader:
        """A training loader that resumes exactly mid-epoch: its order is a pure function of (seed, epoch)
        (length-grouped when ``lengths`` are given) and its position is kept in every checkpoint."""
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        placement = {"seed": self.hparams.seed, "num_replicas": replicas, "rank": rank}
        if lengths is not None:
            sampler = LengthGroupedSampler(lengths, batch_size, **placement)
        else:
            sampler = ShuffledSampler(len(items), batch_size, **placement)
        return self.resumable_loader("train", items, batch_size, collate, sampler, num_workers=num_workers)

    def resumable_loader(
        self,
        name: str,
        items: Sequence,
        batch_size: int,
        collate: Callable,
        sampler: ResumableSampler,
        *,
        num_workers: int = 0,
    ) -> ResumableDataLoader:
        """A training loader over ``sampler`` whose position goes into checkpoints under ``name``."""
        loader = ResumableDataLoader(
            items,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=num_workers,
            generator=self._loader_generator(),
        )
        loader.trainer = self.trainer
        if name in self._positions_to_load:
            loader.load_state_dict(self._positions_to_load.pop(name))
        self._train_loaders[name] = loader
        return loader

    def eval_loader(self, items: Sequence, batch_size: int, collate: Callable, *, num_workers: int = 0) -> DataLoader:
        """A loader in data order that leaves the global RNG alone (a resumed run must not draw differently)."""
        return DataLoader(
            items,
            batch_size=batch_size,
            collate_fn=collate,
            num_workers=num_workers,
            generator=self._loader_generator(),
        )

    def _loader_generator(self) -> torch.Generator:
        # Without a generator every new iterator draws its worker seed from the global RNG, which shifts the
        # dropout masks of the steps after it: a validation run in the middle would change training.
        return torch.Generator().manual_seed(self.hparams.seed)

    def state_dict(self) -> dict[str, Any]:
        """Kept in every checkpoint of ``fit``: how far each training loader got into its epoch, and the RNG
        states at the moment of the save, so a resumed run draws the batches and dropout masks the
        uninterrupted one would have drawn next."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        return {
            "rng": rng_states(),
            "data_position": {name: loader.state_dict() for name, loader in self._train_loaders.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the data module before it builds the training loaders, except that a module
        # reading `trainer.estimated_stepping_batches` in configure_optimizers has built them already (and
        # Lightning then never hands them their saved state): position them in both cases.
        for name, position in state_dict.get("data_position", {}).items():
            if name in self._train_loaders:
                self._train_loaders[name].load_state_dict(position)
            else:
                self._positions_to_load[name] = position
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])


def split_records(
    train: DataSource, val: Optional[DataSource], val_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Train and validation records, from two sources or by holding out a seeded fraction of one."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_records = read_records(train)
    if val is not None:
        if val_fraction:
            raise ValueError("give either `val` or `val_fraction`, not both")
        return train_records, read_records(val)
    if not val_fraction:
        return train_records, []
    order = list(range(len(train_records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(order)))
    held_out = set(order[:n_val])
    return [r for i, r in enumerate(train_records) if i not in held_out], [train_records[i] for i in sorted(held_out)]


class DropCounter:
    """Counts records dropped or truncated by a documented policy, and logs them once (naming the first few
    records of each reason), so nothing vanishes or changes silently."""

    #: Records named per reason in the warning.
    NAMED = 3

    def __init__(self, stage: str):
        self.stage = stage
        self.reasons: Counter[str] = Counter()
        self.records: dict[str, list[str]] = {}

    def add(self, reason: str, record: Any = None) -> None:
        self.reasons[reason] += 1
        named = self.records.setdefault(reason, []) if record is not None else []
        where = f"{record.source}:{record.index}" if record is not None else None
        if where is not None and len(named) <= self.NAMED and where not in named:  # one more than shown: "..."
            named.append(where)

    def _describe(self, reason: str, n: int) -> str:
        named = self.records.get(reason, [])
        more = ", ..." if len(named) > self.NAMED else ""
        return f"{n} {reason}" + (f" ({', '.join(named[: self.NAMED])}{more})" if named else "")

    def report(self, split: str, kept: int) -> dict[str, int]:
        if self.reasons:
            truncated = {r: n for r, n in self.reasons.items() if r.endswith("(kept)")}
            dropped = {r: n for r, n in self.reasons.items() if r not in truncated}
            parts = []
            if dropped:
                parts.append(
                    f"dropped {sum(dropped.values())} records: "
                    + "; ".join(self._describe(r, n) for r, n in dropped.items())
                )
            if truncated:
                parts.append(
                    f"truncated {sum(truncated.values())} sequences and kept them: "
                    + "; ".join(self._describe(r, n) for r, n in truncated.items())
                )
            rank_zero_warn(f"{self.stage} {split}: {'. '.join(parts)}. Using {kept} records.")
        else:
            rank_zero_info(f"{self.stage} {split}: {kept} records.")
        counts = {f"{split}/dropped_{reason.replace(' ', '_')}": n for reason, n in self.reasons.items()}
        self.reasons.clear()
        self.records.clear()
        return counts
