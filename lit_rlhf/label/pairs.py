"""Side-by-side evaluation (``lit-rlhf label serve --pairs``): judgments of two policies' responses.

InstructGPT's main measurement: labelers see a prompt and two responses, from different policies,
in a random left/right order, and say which is better (or that they tie). The pairs file is JSONL,
one comparison a line (what ``lit-rlhf evaluate`` writes; docs/labeling.md)::

    {"id": "p17", "prompt": "...", "policy_a": "ppo", "response_a": "...", "policy_b": "sft", "response_b": "..."}

``prompt`` may be ``messages`` (chat turns) instead; any other field is kept and exported. In the
database response 0 is ``response_a`` and 1 is ``response_b``; a judgment's ranking is ``[[0], [1]]``
(a better), ``[[1], [0]]`` (b better) or ``[[0, 1]]`` (tie), and ``shown_order`` records which was left.

Statistics (``label stats``):

- **Win rate** of each policy against the other, the same statistic ``lit-rlhf evaluate`` reports for its judges
  (:func:`lit_rlhf.algorithms.win_rate.win_rate`): an item's outcome for a policy is 1 (won), 1/2 (tie) or 0
  (lost), averaged over the labelers who judged it; the win rate is the mean over items, with a 95% percentile
  **bootstrap interval over items** (several labelers of one item are not independent evidence).
- **Agreement**: over items judged by two or more labelers, the share of labeler pairs that gave the
  same verdict (a better / b better / tie).
- **Position bias**: the share of non-tie judgments in which the left response won (50% is none), with
  its Wilson interval over those judgments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Optional

from lit_rlhf.label.stats import labeler_activity
from lit_rlhf.label.storage import Item, LabelStore

Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed over ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = max(0.0, center - half), min(1.0, center + half)
    return (0.0 if p <= 0 else low), (1.0 if p >= 1 else high)  # exact at the ends (rounding aside)


def verdict(ranking: list[list[int]]) -> str:
    """``"a"``, ``"b"`` or ``"tie"`` from a stored side-by-side ranking."""
    if len(ranking) == 1:
        return "tie"
    return "a" if ranking[0] == [0] else "b"


@dataclass(frozen=True)
class Outcome:
    item_id: int
    labeler: str
    policy_a: str
    policy_b: str
    winner: str  # "a", "b" or "tie"
    left: str  # "a" or "b": which response the labeler saw on the left


def outcomes(store: LabelStore) -> list[Outcome]:
    """Every ranked side-by-side judgment, oldest item first."""
    items = {item.id: item for item in store.items()}
    shown = store.shown_orders()
    found = []
    for j in store.judgments(status="ranked"):
        item = items[j["item_id"]]
        left = "ab"[shown.get((item.id, j["labeler"]), [0, 1])[0]]
        found.append(
            Outcome(
                item.id, j["labeler"], item.record["policy_a"], item.record["policy_b"], verdict(j["ranking"]), left
            )
        )
    return found


def judgment_record(item: Item, judgment: dict[str, Any], left: str) -> dict[str, Any]:
    """One exported side-by-side judgment: the pairs line's fields plus the verdict, flat."""
    winner = verdict(judgment["ranking"])
    record = dict(item.record)
    record.update(
        response_a=item.responses[0],
        response_b=item.responses[1],
        labeler=judgment["labeler"],
        left=left,
        winner=winner,
        winner_policy=None if winner == "tie" else item.record[f"policy_{winner}"],
        score_a=judgment["scores"][0],
        score_b=judgment["scores"][1],
        flags_a=judgment["flags"][0],
        flags_b=judgment["flags"][1],
    )
    if judgment["rewrite"]:
        record["rewrite"] = judgment["rewrite"]
    return record


def export_records(store: LabelStore) -> tuple[list[dict[str, Any]], int]:
    """(judgment records, skipped count) of a side-by-side database."""
    items = {item.id: item for item in store.items()}
    shown = store.shown_orders()
    records, skipped = [], 0
    for j in store.judgments(status=None):
        if j["status"] == "skipped":
            skipped += 1
            continue
        left = "ab"[shown.get((j["item_id"], j["labeler"]), [0, 1])[0]]
        records.append(judgment_record(items[j["item_id"]], j, left))
    return records, skipped


@dataclass
class WinRate:
    policy: str
    opponent: str
    rate: float
    low: float
    high: float
    items: int
    wins: int
    ties: int
    losses: int


def win_rates(found: list[Outcome]) -> list[WinRate]:
    """Each policy's win rate against each policy it met (ties count half), bootstrap interval over items."""
    import torch

    from lit_rlhf.algorithms.win_rate import win_rate

    per_item: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    tallies: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for o in found:
        for me, other, side in ((o.policy_a, o.policy_b, "a"), (o.policy_b, o.policy_a, "b")):
            score = 0.5 if o.winner == "tie" else float(o.winner == side)
            per_item[(me, other)][o.item_id].append(score)
            tallies[(me, other)][0 if score == 1 else 1 if score == 0.5 else 2] += 1
    rates = []
    for (me, other), items in sorted(per_item.items()):
        scores = torch.tensor([score for item_scores in items.values() for score in item_scores])
        item_ids = torch.tensor([item for item, item_scores in items.items() for _ in item_scores])
        found_rate = win_rate(scores, item_ids)
        wins, ties, losses = tallies[(me, other)]
        rates.append(
            WinRate(me, other, found_rate.value, found_rate.low, found_rate.high, len(items), wins, ties, losses)
        )
    return rates


def agreement(found: list[Outcome]) -> tuple[int, int]:
    """(labeler pairs with the same verdict, labeler pairs) over items judged by two or more labelers."""
    by_item: dict[int, list[Outcome]] = defaultdict(list)
    for o in found:
        by_item[o.item_id].append(o)
    agreed = compared = 0
    for judged in by_item.values():
        for x, y in combinations(judged, 2):
            compared += 1
            agreed += x.winner == y.winner
    return agreed, compared


def position_bias(found: list[Outcome]) -> tuple[int, int]:
    """(non-tie judgments the left response won, non-tie judgments)."""
    decided = [o for o in found if o.winner != "tie"]
    return sum(o.winner == o.left for o in decided), len(decided)


def format_pairs_stats(store: LabelStore) -> str:
    judgments = store.judgments(status=None)
    found = outcomes(store)
    ties = sum(o.winner == "tie" for o in found)
    lines = [
        f"side by side: {len(store.items())} pairs, {len({o.item_id for o in found})} judged at least once; "
        f"{len(found)} judgments ({ties} ties), {sum(j['status'] == 'skipped' for j in judgments)} skipped"
    ]
    lines.append(f"{'labeler':<20} {'judged':>7} {'skipped':>8} {'median s':>9}")
    for name, entry in sorted(labeler_activity(judgments).items()):
        lines.append(f"{name:<20} {entry['ranked']:>7} {entry['skipped']:>8} {_num(entry['median_seconds'], '.1f'):>9}")
    for r in win_rates(found):
        lines.append(
            f"win rate {r.policy} vs {r.opponent}: {r.rate:.1%} (95% CI {r.low:.1%} to {r.high:.1%}, bootstrap over "
            f"{r.items} items; ties count half) — {r.wins} wins, {r.ties} ties, {r.losses} losses"
        )
    agreed, compared = agreement(found)
    if compared:
        lines.append(
            f"agreement: {agreed / compared:.1%} ({agreed} of {compared} labeler pairs on overlapping items "
            f"gave the same verdict: a, b or tie)"
        )
    else:
        lines.append("agreement: no pair judged by two labelers yet (serve with --overlap 2 or more to measure it)")
    left, decided = position_bias(found)
    if decided:
        low, high = wilson_interval(left / decided, decided)
        lines.append(
            f"position bias: the left response won {left} of {decided} non-tie judgments ({left / decided:.1%}, "
            f"95% CI {low:.1%} to {high:.1%}; 50% is none)"
        )
    else:
        lines.append("position bias: no non-tie judgment yet")
    return "\n".join(lines)


def _num(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)
