"""Padding, length grouping and packing, shared by every stage's DataModule."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler

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


class LengthGroupedSampler(Sampler[int]):
    """Shuffled indices in which every run of ``batch_size`` indices has similar lengths.

    Indices are shuffled, cut into mega-batches of ``batch_size * group_factor``, sorted by length
    inside each mega-batch, cut into batches, and the batches are shuffled again. Padding waste is
    small while the order stays random. Under DDP Lightning wraps this sampler and deals its
    indices round-robin, so every rank still receives runs of similar length.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, group_factor: int = 50, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_factor = group_factor
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        indices = list(range(len(self.lengths)))
        rng.shuffle(indices)
        mega = self.batch_size * self.group_factor
        batches = []
        for start in range(0, len(indices), mega):
            chunk = sorted(indices[start : start + mega], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for batch in batches for i in batch])
