"""What every stage's DataModule shares: the tokenizer it uses, train/val splitting, and counters."""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from typing import Any, Optional

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.records import DataSource, FieldMap, Record, read_records
from lit_rlhf.models import load_tokenizer

log = logging.getLogger(__name__)


def resolve_tokenizer(datamodule: Any, source: Optional[str], *, padding_side: str = "right") -> PreTrainedTokenizerBase:
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


class StageDataModule(LightningDataModule):
    """What every stage's DataModule shares: its hyperparameters, field names, seed and tokenizer source.

    Subclasses call ``super().__init__(tokenizer, fields, seed)`` first; Lightning collects the
    subclass's own arguments into ``hparams`` too. The tokenizer is left out of ``hparams`` because the
    LightningModule logs it: one value per key.
    """

    def __init__(self, tokenizer: Optional[str], fields: Optional[dict[str, str]], seed: Optional[int]):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.hparams.seed = resolve_seed(seed)
        self.tokenizer_source = tokenizer
        self.fields = FieldMap(fields or {})
        self.tokenizer: Optional[PreTrainedTokenizerBase] = None


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
    """Counts records dropped by a documented policy, and logs them once, so nothing vanishes silently."""

    def __init__(self, stage: str):
        self.stage = stage
        self.reasons: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1

    def report(self, split: str, kept: int) -> dict[str, int]:
        if self.reasons:
            detail = ", ".join(f"{n} {reason}" for reason, n in self.reasons.items())
            rank_zero_warn(f"{self.stage} {split}: dropped {sum(self.reasons.values())} records ({detail}); kept {kept}.")
        else:
            rank_zero_info(f"{self.stage} {split}: {kept} records.")
        counts = {f"{split}/dropped_{reason.replace(' ', '_')}": n for reason, n in self.reasons.items()}
        self.reasons.clear()
        return counts
