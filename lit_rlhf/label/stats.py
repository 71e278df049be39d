"""``lit-rlhf label stats``: per-labeler counts and speed, and inter-labeler agreement.

Agreement is measured as InstructGPT reports it (section 3.4: labelers agree with each other
72.6 ± 1.5% of the time): over the items two labelers both ranked, the share of response pairs on
which they prefer the same response. Pairs that either labeler tied carry no preference and are
counted apart (``tied_pairs``). Each labeler's agreement is pooled over their pairs with every other
labeler; the headline is the mean over labelers ± its standard error, beside the share pooled over
all pairs.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Optional

from lit_rlhf.label.judgments import pair_preferences, ranks_from_groups
from lit_rlhf.label.storage import LabelStore


@dataclass
class PairTally:
    agreed: int = 0
    compared: int = 0
    tied_pairs: int = 0

    def add(self, other: "PairTally") -> None:
        self.agreed += other.agreed
        self.compared += other.compared
        self.tied_pairs += other.tied_pairs

    @property
    def share(self) -> Optional[float]:
        return self.agreed / self.compared if self.compared else None


@dataclass
class Agreement:
    pooled: PairTally = field(default_factory=PairTally)
    per_labeler: dict[str, PairTally] = field(default_factory=dict)
    per_pair: dict[tuple[str, str], PairTally] = field(default_factory=dict)

    @property
    def mean_and_stderr(self) -> tuple[Optional[float], Optional[float]]:
        shares = [t.share for t in self.per_labeler.values() if t.share is not None]
        if not shares:
            return None, None
        if len(shares) == 1:
            return shares[0], None
        return statistics.fmean(shares), statistics.stdev(shares) / math.sqrt(len(shares))


def compare_rankings(ranks_a: list[int], ranks_b: list[int]) -> PairTally:
    """How two labelers' ranks of the same responses agree, pair by pair."""
    tally = PairTally()
    prefs_b = pair_preferences(ranks_b)
    for pair, a in pair_preferences(ranks_a).items():
        b = prefs_b[pair]
        if a == 0 or b == 0:
            tally.tied_pairs += 1
        else:
            tally.compared += 1
            tally.agreed += a == b
    return tally


def agreement(judgments: list[dict[str, Any]]) -> Agreement:
    """Agreement over every item that two or more labelers ranked."""
    by_item: dict[int, list[dict]] = defaultdict(list)
    for j in judgments:
        if j["status"] == "ranked":
            by_item[j["item_id"]].append(j)
    result = Agreement()
    for item_judgments in by_item.values():
        for a, b in combinations(sorted(item_judgments, key=lambda j: j["labeler"]), 2):
            tally = compare_rankings(ranks_from_groups(a["ranking"]), ranks_from_groups(b["ranking"]))
            result.pooled.add(tally)
            result.per_pair.setdefault((a["labeler"], b["labeler"]), PairTally()).add(tally)
            for name in (a["labeler"], b["labeler"]):
                result.per_labeler.setdefault(name, PairTally()).add(tally)
    return result


def labeler_activity(judgments: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per labeler: ranked and skipped counts, median seconds from seeing an item to judging it, items per hour."""
    out: dict[str, dict[str, Any]] = {}
    seconds: dict[str, list[float]] = defaultdict(list)
    for j in judgments:
        entry = out.setdefault(j["labeler"], {"ranked": 0, "skipped": 0})
        entry[j["status"]] += 1
        if j["revision"] == 1:  # a later edit's time says nothing about how long the first reading took
            seconds[j["labeler"]].append(max(0.0, j["submitted_at"] - j["shown_at"]))
    for name, entry in out.items():
        times = seconds.get(name, [])
        entry["median_seconds"] = statistics.median(times) if times else None
        entry["items_per_hour"] = 3600.0 / statistics.fmean(times) if times and statistics.fmean(times) > 0 else None
    return out


def format_stats(store: LabelStore) -> str:
    if store.mode() == "pairs":
        from lit_rlhf.label.pairs import format_pairs_stats

        return format_pairs_stats(store)
    judgments = store.judgments(status=None)
    lines = [
        f"{len(store.items())} items, {len({j['item_id'] for j in judgments if j['status'] == 'ranked'})} ranked at "
        "least once"
    ]
    lines.append(
        f"{'labeler':<20} {'ranked':>7} {'skipped':>8} {'median s':>9} {'items/h':>8} {'agreement':>10} {'pairs':>7}"
    )
    found = agreement(judgments)
    for name, entry in sorted(labeler_activity(judgments).items()):
        tally = found.per_labeler.get(name, PairTally())
        lines.append(
            f"{name:<20} {entry['ranked']:>7} {entry['skipped']:>8} {_num(entry['median_seconds'], '.1f'):>9} "
            f"{_num(entry['items_per_hour'], '.0f'):>8} {_num(tally.share, '.1%'):>10} {tally.compared:>7}"
        )
    mean, stderr = found.mean_and_stderr
    if mean is None:
        lines.append("agreement: no item ranked by two labelers yet (serve with --overlap 2 or more to measure it)")
    else:
        spread = "" if stderr is None else f" ± {stderr:.1%}"
        lines.append(
            f"agreement: {mean:.1%}{spread} (mean over labelers ± standard error; paper 72.6 ± 1.5%); pooled "
            f"{found.pooled.share:.1%} of {found.pooled.compared} pairs; {found.pooled.tied_pairs} pairs tied by a "
            "labeler not counted"
        )
    return "\n".join(lines)


def _num(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)
