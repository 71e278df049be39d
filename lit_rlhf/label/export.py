"""``lit-rlhf label export``: judgments -> comparison records the RM stage trains on (configs/rm.yaml).

Each record is the sample line's own fields (``prompt`` or ``messages``, and anything else it
carried) plus ``"responses": [best, ..., worst]`` and ``"ranks"`` (lower is better, ties share a
rank), the format :class:`~lit_rlhf.data.RewardDataModule` reads. Skipped items are left out;
rankings where every response ties carry no pair and are left out too (and counted).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from lit_rlhf.label.judgments import dense_ranks, positional_ranks, ranks_from_groups
from lit_rlhf.label.storage import Item, LabelStore


@dataclass
class ExportCounts:
    comparisons: int = 0
    val_comparisons: int = 0
    demonstrations: int = 0
    skipped: int = 0
    all_tied: int = 0
    items_without_judgment: int = 0
    per_labeler: dict[str, int] = field(default_factory=dict)


def comparison_record(item: Item, ranks: list[int], per_response: dict[str, list], **extra: Any) -> dict[str, Any]:
    """The item's sample fields + its responses sorted best first with their ranks; ``per_response``
    lists (one entry per stored response) are reordered alongside, ``extra`` fields are added as they are."""
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    record = dict(item.record, **extra)
    record.update(responses=[item.responses[i] for i in order], ranks=[ranks[i] for i in order])
    for name, values in per_response.items():
        record[name] = [values[i] for i in order]
    return record


def demonstration_record(item: Item, response: str, labeler: str) -> dict[str, Any]:
    """An SFT record from a labeler's rewrite: ``{"prompt", "response"}``, or a chat with the rewrite as the last
    turn."""
    record = dict(item.record, labeler=labeler)
    if "prompt" not in record and isinstance(record.get("messages"), list):
        record["messages"] = record["messages"] + [{"role": "assistant", "content": response}]
    else:
        record["response"] = response
    return record


def build_comparisons(
    store: LabelStore, merge: Literal["per_labeler", "mean_rank"], counts: ExportCounts
) -> list[tuple[int, dict]]:
    """(item id, comparison record) pairs: one per ranked judgment, or one per item merged by mean rank."""
    items = {item.id: item for item in store.items()}
    by_item: dict[int, list[dict]] = defaultdict(list)
    for judgment in store.judgments(status=None):
        if judgment["status"] == "skipped":
            counts.skipped += 1
        else:
            by_item[judgment["item_id"]].append(judgment)
    counts.items_without_judgment = len(items) - len(by_item)
    out = []
    for item_id, judgments in sorted(by_item.items()):
        item = items[item_id]
        if merge == "per_labeler":
            for j in judgments:
                ranks = ranks_from_groups(j["ranking"])
                if len(set(ranks)) < 2:
                    counts.all_tied += 1
                    continue
                counts.per_labeler[j["labeler"]] = counts.per_labeler.get(j["labeler"], 0) + 1
                out.append(
                    (
                        item_id,
                        comparison_record(
                            item,
                            ranks,
                            {"scores": j["scores"], "flags": j["flags"]},
                            labeler=j["labeler"],
                        ),
                    )
                )
        else:
            per_labeler = [positional_ranks(j["ranking"]) for j in judgments]
            mean = [round(sum(r[i] for r in per_labeler) / len(per_labeler), 9) for i in range(len(item.responses))]
            ranks = dense_ranks(mean)
            if len(set(ranks)) < 2:
                counts.all_tied += 1
                continue
            for j in judgments:
                counts.per_labeler[j["labeler"]] = counts.per_labeler.get(j["labeler"], 0) + 1
            out.append(
                (
                    item_id,
                    comparison_record(
                        item,
                        ranks,
                        {"mean_rank": mean},
                        labelers=sorted(j["labeler"] for j in judgments),
                    ),
                )
            )
    return out


def export_comparisons(
    db: str,
    out: str,
    merge: Literal["per_labeler", "mean_rank"] = "per_labeler",
    val_out: Optional[str] = None,
    val_fraction: float = 0.1,
    demonstrations_out: Optional[str] = None,
    seed: int = 0,
) -> ExportCounts:
    """Write the ranked judgments of a labeling database as comparison records (JSONL) for the RM stage:
    ``lit-rlhf fit --config configs/rm.yaml --data.init_args.train OUT --data.init_args.val VAL_OUT``.
    A side-by-side database (``serve --pairs``) writes its judgments instead, one line each: the pairs
    line's fields plus ``labeler``, ``left``, ``winner`` (a/b/tie), ``winner_policy``, scores and flags.

    Args:
        db: The labeling database (``lit-rlhf label serve --db``).
        out: Comparison records for ``configs/rm.yaml`` (``--data.init_args.train``).
        merge: ``per_labeler``: one record per judgment (with a ``labeler`` field; the RM then sees
            every labeler's view of an item). ``mean_rank``: one record per item, responses ordered by
            their mean rank over the labelers (equal means tie).
        val_out: Also write a validation file: a seeded ``val_fraction`` of the items (all records of
            an item go to the same file).
        val_fraction: Share of items written to ``val_out``, in (0, 1).
        demonstrations_out: Also write ``{"prompt", "response"}`` SFT records from responses labelers rewrote.
        seed: Seed of the validation split.
    """
    if val_out is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) when val_out is set, got {val_fraction}")
    if not Path(db).exists():
        raise FileNotFoundError(f"{db}: no labeling database here (lit-rlhf label serve --db creates it)")
    store = LabelStore(db)
    counts = ExportCounts()
    if store.mode() == "pairs":
        return _export_pairs(store, out, merge, val_out, demonstrations_out, counts)
    records = build_comparisons(store, merge, counts)
    val_items: set[int] = set()
    if val_out is not None:
        item_ids = sorted({item_id for item_id, _ in records})
        random.Random(seed).shuffle(item_ids)
        val_items = set(item_ids[: max(1, round(val_fraction * len(item_ids)))]) if len(item_ids) > 1 else set()
        if not val_items:
            # An empty validation file would stop the RM stage later, far from the cause: refuse now.
            raise ValueError(
                f"--val_out {val_out}: {len(item_ids)} item(s) with a usable ranking, too few to hold one out for "
                f"validation (need 2 or more); nothing written. Rank more items, or export without --val_out"
            )
    train = [r for item_id, r in records if item_id not in val_items]
    _write_jsonl(out, train)
    counts.comparisons = len(train)
    if val_out is not None:
        val = [r for item_id, r in records if item_id in val_items]
        _write_jsonl(val_out, val)
        counts.val_comparisons = len(val)
    if demonstrations_out is not None:
        demos = []
        items = {item.id: item for item in store.items()}
        for judgment in store.judgments(status="ranked"):
            if judgment["rewrite"]:
                item = items[judgment["item_id"]]
                demos.append(demonstration_record(item, judgment["rewrite"], judgment["labeler"]))
        _write_jsonl(demonstrations_out, demos)
        counts.demonstrations = len(demos)
    store.close()
    line = f"wrote {counts.comparisons} comparisons to {out}"
    if val_out is not None:
        line += f" and {counts.val_comparisons} to {val_out}"
    if demonstrations_out is not None:
        line += f", {counts.demonstrations} demonstrations to {demonstrations_out}"
    print(
        f"{line}; left out: {counts.skipped} skipped judgments, {counts.all_tied} rankings with every response tied, "
        f"{counts.items_without_judgment} items not ranked yet"
    )
    return counts


def _export_pairs(
    store: LabelStore,
    out: str,
    merge: str,
    val_out: Optional[str],
    demonstrations_out: Optional[str],
    counts: ExportCounts,
) -> ExportCounts:
    from lit_rlhf.label.pairs import export_records

    for name, value, default in (
        ("merge", merge, "per_labeler"),
        ("val_out", val_out, None),
        ("demonstrations_out", demonstrations_out, None),
    ):
        if value != default:
            raise ValueError(
                f"--{name}: not for a side-by-side database ({store.path} was served with --pairs); "
                f"export writes its judgments to --out"
            )
    records, counts.skipped = export_records(store)
    _write_jsonl(out, records)
    counts.comparisons = len(records)
    judged = {j["item_id"] for j in store.judgments(status="ranked")}
    counts.items_without_judgment = len(store.items()) - len(judged)
    store.close()
    print(
        f"wrote {counts.comparisons} side-by-side judgments to {out}; left out: {counts.skipped} skipped, "
        f"{counts.items_without_judgment} pairs not judged yet"
    )
    return counts


def _write_jsonl(path: str, rows: list[dict]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a crash mid-export never leaves a half-written file where a training run reads it.
    partial = target.with_name(target.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    partial.replace(target)
