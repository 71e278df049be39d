"""Padding, length grouping and packing, shared by every stage's DataModule."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lit_rlhf.data.tokenize import IGNORE_INDEX, Example


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int, *, side: str = "right") -> tuple[Tensor, Tensor]:
    """Pad to the longest sequence. Returns (ids [B, T], attention_mask [B, T]).

    Prompts for generation are left-padded so that every row continues from its last column.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def collate_examples(examples: Sequence[Example], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` on padding)."""
    input_ids, attention_mask = pad_sequences([e.input_ids for e in examples], pad_id)
    labels, _ = pad_sequences([e.labels for e in examples], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(rows: Sequence[Sequence[Example]], pad_id: int) -> dict[str, Tensor]:
    """Rows of packed examples. Positions restart at 0 for every example and no attention mask is
    passed: transformers then builds a block-diagonal mask from the positions, so packed
    examples never attend to each other."""
    flat = [Example(sum((e.input_ids for e in row), []), sum((e.labels for e in row), [])) for row in rows]
    positions = [sum((list(range(len(e.input_ids))) for e in row), []) for row in rows]
    batch = collate_examples(flat, pad_id)
    # Padding gets positions of its own run, so it forms a separate block too.
    length = batch["input_ids"].shape[1]
    batch["position_ids"] = torch.stack(
        [torch.as_tensor(p + list(range(length - len(p))), dtype=torch.long) for p in positions]
    )
    del batch["attention_mask"]
    return batch


def pack_examples(examples: Sequence[Example], max_length: int) -> list[list[Example]]:
    """Greedy first-fit-decreasing packing of examples into rows of at most ``max_length`` tokens."""
    rows: list[list[Example]] = []
    space: list[int] = []
    for example in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        size = len(example.input_ids)
        for i, free in enumerate(space):
            if size <= free:
                rows[i].append(example)
                space[i] -= size
                break
        else:
            rows.append([example])
            space.append(max_length - size)
    return rows


class ResumableSampler(DistributedSampler):
    """This rank's share of an epoch order that is a pure function of (seed, epoch), resumable mid-epoch.

    Exact resume needs two things a plain ``DataLoader`` does not give: the order of an epoch must
    not depend on any RNG state (so a resumed process draws the same order), and the batches the
    interrupted run already consumed must be skipped. ``resume = (epoch, batches)`` does the latter
    once, when iteration reaches that epoch; the data module sets it from its checkpoint state.

    The global order of an epoch is dealt round-robin to the ranks (padded with its first indices to
    a multiple of ``num_replicas``), so a run of ``batch_size * num_replicas`` consecutive indices
    becomes one batch on every rank. Subclassing ``DistributedSampler`` keeps Lightning from wrapping
    it under DDP (its wrapper would reshuffle the order).
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(num_items), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.num_items, self.batch_size = num_items, batch_size
        self.resume: Optional[tuple[int, int]] = None  # (epoch, batches to skip), applied once

    def global_order(self, epoch: int) -> list[int]:
        """Every index once, in the order of ``epoch`` across all ranks."""
        raise NotImplementedError

    def batches_to_skip(self) -> int:
        """Batches of the current epoch a resumed run already consumed (0 after the first call)."""
        if self.resume is None:
            return 0
        epoch, batches = self.resume
        self.resume = None
        return batches if epoch == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        skip = self.batches_to_skip()
        order = self.global_order(self.epoch)
        order += order[: self.total_size - len(order)]
        yield from order[self.rank :: self.num_replicas][skip * self.batch_size :]


class ShuffledSampler(ResumableSampler):
    """A fresh random permutation every epoch, seeded by ``seed + epoch``."""

    def global_order(self, epoch: int) -> list[int]:
        indices = list(range(self.num_items))
        random.Random(self.seed + epoch).shuffle(indices)
        return indices


class LengthGroupedSampler(ResumableSampler):
    """Shuffled indices in which every run of ``batch_size`` indices has similar lengths.

    Indices are shuffled, cut into mega-batches of ``batch_size * group_factor``, sorted by length
    inside each mega-batch, cut into batches, and the batches are shuffled again. Padding waste is
    small while the order stays random. Batches are formed for all ranks together and dealt
    round-robin, so every rank still receives runs of similar length.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        group_factor: int = 50,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(len(lengths), batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        self.lengths = list(lengths)
        self.group_factor = group_factor

    def global_order(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed + epoch)
        indices = list(range(len(self.lengths)))
        rng.shuffle(indices)
        batch = self.batch_size * self.num_replicas
        mega = batch * self.group_factor
        batches = []
        for start in range(0, len(indices), mega):
            chunk = sorted(indices[start : start + mega], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
        rng.shuffle(batches)
        return [i for b in batches for i in b]


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose position Lightning keeps in every checkpoint.

    Lightning saves ``state_dict()`` of every training loader that has one and hands it back to
    ``load_state_dict`` on ``--ckpt_path`` resume, before iterating. The position is read from the
    trainer's progress counters, not counted here: Lightning fetches one batch ahead, so the batches
    drawn from the loader are one more than the batches trained on.

    Set ``trainer`` after construction (Lightning may re-create loaders from their constructor arguments).
    """

    trainer = None

    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        sampler: ResumableSampler = self.sampler
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": self.trainer.current_epoch,
            "batches": progress.processed,
            "num_items": sampler.num_items,
            "batch_size": sampler.batch_size,
            "num_replicas": sampler.num_replicas,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        sampler: ResumableSampler = self.sampler
        layout = (sampler.num_items, sampler.batch_size, sampler.num_replicas)
        saved = (state["num_items"], state["batch_size"], state["num_replicas"])
        if saved != layout:
            rank_zero_warn(
                f"the checkpoint's data position was saved with (items, batch size, devices) = {saved}, this run has "
                f"{layout}: the interrupted epoch restarts from its first batch instead of resuming exactly."
            )
            return
        sampler.resume = (state["epoch"], state["batches"])
