"""Turning sampled responses into comparison records with the gold labeler (the sandbox's humans)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from lit_rlhf.atomic import atomic_file
from lit_rlhf.data.records import read_records
from lit_rlhf.errors import check_option
from lit_rlhf.sandbox.labeler import GoldLabeler


def label_samples(
    samples: str, out_dir: str, val_fraction: float = 0.1, seed: int = 0, tie_tolerance: float = 0.01
) -> dict[str, int]:
    """Rank the K responses of every line of a ``lit-rlhf sample`` file with the gold labeler.

    Writes ``train.jsonl`` and ``val.jsonl`` comparison records ``{"prompt", "responses": [best..worst],
    "ranks"}`` into ``out_dir``. Prompts whose responses all tie yield no pair and are dropped; the
    count is returned and printed, never silently lost. Repeated responses are labeled once and
    empty ones are left out.

    Args:
        samples: JSONL written by ``lit-rlhf sample`` (prompt fields + ``responses``).
        out_dir: Directory for train.jsonl and val.jsonl.
        val_fraction: Fraction of prompts held out for validation.
        seed: Seed of the train/val split.
        tie_tolerance: Gold scores closer than this are a tie.
    """
    check_option("val_fraction", val_fraction, min=0, max=1, max_open=True)
    check_option("tie_tolerance", tie_tolerance, min=0)
    labeler = GoldLabeler(tie_tolerance=tie_tolerance)
    comparisons, all_tied = [], 0
    for record in read_records(samples):
        # A small policy often samples the same response twice, or an empty one (EOS first); comparison
        # records need distinct, non-empty responses (RewardDataModule refuses the others).
        distinct = list(dict.fromkeys(r for r in record.data["responses"] if r.strip()))
        comparison = labeler.to_comparison(record.data, distinct)
        if comparison is None:
            all_tied += 1
            continue
        comparisons.append(comparison)
    random.Random(seed).shuffle(comparisons)
    n_val = max(1, round(val_fraction * len(comparisons)))
    out = Path(out_dir)
    for name, rows in (("val.jsonl", comparisons[:n_val]), ("train.jsonl", comparisons[n_val:])):
        with atomic_file(out / name) as f:  # a killed run never leaves half a file for the RM to train on
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    counts = {"train": len(comparisons) - n_val, "val": n_val, "dropped_all_tied": all_tied}
    print(
        f"labeled {samples}: {counts['train']} train and {counts['val']} val comparisons; {all_tied} prompts dropped "
        "(fewer than two distinct non-empty responses, or all tied)"
    )
    return counts
