"""A seeded split of one dataset into disjoint parts, one per use (SFT, reward model, held-out judge, PPO prompts,
evaluation prompts), written as files the stages read.

Records are kept unchanged (a raw ``hh_rlhf`` transcript stays one), so every part is read by the data modules'
format detection like the source itself. Records are grouped before they are shuffled, by their first human turn
by default: conversations that open with the same request land in the same part, so an evaluation prompt is not a
near-copy of a training one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lit_rlhf.atomic import atomic_file
from lit_rlhf.data.records import DataSource, read_records
from lit_rlhf.errors import ConfigError, check_option

#: The file beside the parts that says how they were made: the seed, the source and each part's size.
MANIFEST = "split.json"

#: Marks the end of the first human turn in a raw HH-RLHF transcript (``"\n\nHuman: ...\n\nAssistant: ..."``).
FIRST_ASSISTANT_TURN = "\n\nAssistant:"


def first_turn(record: Mapping[str, Any]) -> str:
    """The grouping key of a record: its conversation up to the first assistant turn (the opening request).

    Reads the ``prompt`` field when there is one, else ``chosen`` (a raw transcript or a message list), else the
    whole record.
    """
    conversation = record.get("prompt", record.get("chosen"))
    if isinstance(conversation, str):
        return conversation.split(FIRST_ASSISTANT_TURN, 1)[0].strip()
    if isinstance(conversation, list) and conversation and isinstance(conversation[0], Mapping):
        return str(conversation[0].get("content", conversation[0]))
    return json.dumps(record, sort_keys=True)


def assign_parts(keys: list[str], fractions: Mapping[str, float], seed: int) -> dict[str, list[int]]:
    """Indices of ``keys``' records per part: groups of equal key are shuffled with ``seed`` and dealt in turn to
    each part until it holds ``fraction`` of all records (rounded down); records left over belong to no part.

    A group is never split, so the parts are disjoint in their keys as well as in their records.
    """
    for name, fraction in fractions.items():
        check_option(f"fractions.{name}", fraction, min=0, max=1)
    if sum(fractions.values()) > 1 + 1e-9:
        raise ConfigError(f"fractions must sum to at most 1, got {sum(fractions.values()):g} ({dict(fractions)})")
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = sorted(groups)  # a fixed order before the shuffle: dict order would follow the file
    random.Random(seed).shuffle(order)
    parts: dict[str, list[int]] = {name: [] for name in fractions}
    targets = {name: int(fraction * len(keys)) for name, fraction in fractions.items()}
    names = iter(fractions)
    current = next(names, None)
    for key in order:
        while current is not None and len(parts[current]) >= targets[current]:
            current = next(names, None)
        if current is None:
            break
        parts[current].extend(groups[key])
    return {name: sorted(indices) for name, indices in parts.items()}


def split_dataset(
    source: DataSource,
    out: str | Path,
    fractions: Mapping[str, float],
    seed: int = 0,
    key: Callable[[Mapping[str, Any]], str] = first_turn,
) -> dict[str, Path]:
    """Write ``<out>/<part>.jsonl`` for each part of ``fractions`` and ``<out>/split.json``; return the part files.

    Args:
        source: The dataset (any source :func:`~lit_rlhf.data.records.read_records` reads).
        out: Directory of the part files.
        fractions: Part name -> share of the records (in order; their sum at most 1).
        seed: Seed of the shuffle: the same seed gives the same parts.
        key: Records with the same key go to the same part (default: the opening request).
    """
    records = read_records(source)
    data = [record.data for record in records]
    parts = assign_parts([key(record) for record in data], fractions, seed)
    empty = [name for name, indices in parts.items() if not indices and fractions[name] > 0]
    if empty:
        raise ConfigError(f"{source}: {len(data)} records leave no record for part(s) {', '.join(empty)}")
    root = Path(out)
    files = {}
    for name, indices in parts.items():
        files[name] = root / f"{name}.jsonl"
        with atomic_file(files[name]) as f:
            f.writelines(json.dumps(data[i], ensure_ascii=False) + "\n" for i in indices)
    manifest = {
        "source": source,
        "seed": seed,
        "records": len(data),
        "parts": {name: len(indices) for name, indices in parts.items()},
        "fractions": dict(fractions),
    }
    with atomic_file(root / MANIFEST) as f:
        json.dump(manifest, f, indent=1)
    return files
