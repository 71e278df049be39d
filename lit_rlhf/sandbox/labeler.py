"""The gold labeler: a deterministic judge that scores any response to a sandbox prompt in [0, 1].

It plays the role of InstructGPT's human labelers: it ranks K sampled responses to build
reward-model comparisons, and it measures whether SFT and PPO actually helped.

Scoring, after cutting the response at the first end-of-text token and trimming outer
whitespace (empty -> 0):

- letter families (reverse, sort, uppercase): the response's non-space characters are compared
  with the answer's letters: ``0.75 * (1 - edit_distance / longer_length) + 0.25 * bag_F1``
  (bag_F1: overlap of the two letter multisets, credit for the right letters in the wrong
  order). Letters not written one per word (``"madk"``) lose 10% for format. Junk after the
  answer adds characters, which raises the edit distance and lowers the score.
- number families (count, arithmetic): the leading integer is compared with the answer:
  ``1 / (1 + |difference| / tolerance)``, then divided by ``1 + 0.25 * junk`` where junk counts
  the non-space characters after the number. No leading integer -> 0.
"""

from __future__ import annotations

import re
from collections import Counter

from lit_rlhf.sandbox.families import FAMILY_BY_NAME, parse_prompt
from lit_rlhf.sandbox.tokenizer import EOS_TOKEN

EDIT_WEIGHT = 0.75
FORMAT_PENALTY = 0.9
JUNK_PENALTY_PER_CHAR = 0.25
# Off-by-one costs half the credit when counting; arithmetic answers are larger, so twice as lenient.
NUMBER_TOLERANCE = {"count": 1.0, "arithmetic": 2.0}
_LEADING_INT = re.compile(r"\d+")


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two item sequences (insert, delete, substitute cost 1)."""
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i]
        for j, item_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item_a != item_b)))
        previous = current
    return previous[-1]


def bag_f1(a: list[str], b: list[str]) -> float:
    """F1 overlap of two multisets; 1.0 when both hold the same items in any order."""
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    return 2 * common / (len(a) + len(b))


def clean_response(response: str) -> str:
    """The part of a response the labeler reads: up to the first end-of-text token, trimmed."""
    return response.split(EOS_TOKEN, 1)[0].strip()


def score_letters(answer: str, text: str) -> float:
    """Partial credit for a spaced letter sequence (see the module docstring)."""
    target = answer.split()
    produced = [c for c in text if not c.isspace()]
    if not produced:
        return 0.0
    similarity = 1 - edit_distance(produced, target) / max(len(produced), len(target))
    score = EDIT_WEIGHT * similarity + (1 - EDIT_WEIGHT) * bag_f1(produced, target)
    well_formed = text.split() == produced
    return score if well_formed else score * FORMAT_PENALTY


def score_number(answer: str, text: str, tolerance: float) -> float:
    """Partial credit for an integer answer (see the module docstring)."""
    match = _LEADING_INT.match(text)
    if match is None:
        return 0.0
    closeness = 1 / (1 + abs(int(match.group()) - int(answer)) / tolerance)
    junk = sum(not c.isspace() for c in text[match.end() :])
    return closeness / (1 + JUNK_PENALTY_PER_CHAR * junk)


class GoldLabeler:
    """Scores and ranks responses to sandbox prompts.

    Args:
        tie_tolerance: Scores closer than this to the best score of their group share a rank
            (a tie, which yields no reward-model pair).
    """

    def __init__(self, tie_tolerance: float = 0.01) -> None:
        if tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
        self.tie_tolerance = tie_tolerance

    @staticmethod
    def resolve(record: dict) -> dict:
        """The record with family and answer, parsed from its prompt text when they are missing.

        Raises:
            ValueError: If the record has no usable ``family``/``answer`` and no parsable ``prompt``.
        """
        if "family" in record and "answer" in record:
            if record["family"] not in FAMILY_BY_NAME:
                raise ValueError(f"record field 'family': unknown family {record['family']!r}")
            return record
        if "prompt" not in record:
            raise ValueError(f"record has neither 'family'/'answer' nor 'prompt': {record!r}")
        return parse_prompt(record["prompt"])

    def score(self, record: dict, response: str) -> float:
        """Gold score of ``response`` in [0, 1]: 1.0 for the exact answer, partial credit otherwise."""
        record = self.resolve(record)
        text = clean_response(response)
        if not text:
            return 0.0
        family = FAMILY_BY_NAME[record["family"]]
        answer = str(record["answer"])
        if family.kind == "letters":
            return score_letters(answer, text)
        return score_number(answer, text, NUMBER_TOLERANCE[family.name])

    def rank(self, record: dict, responses: list[str]) -> list[int]:
        """Dense ranks of ``responses`` in input order: 0 = best, equal ranks = tie."""
        scores = [self.score(record, r) for r in responses]
        ranks = [0] * len(scores)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        rank, group_top = -1, None
        for i in order:
            if group_top is None or scores[i] < group_top - self.tie_tolerance:
                rank, group_top = rank + 1, scores[i]
            ranks[i] = rank
        return ranks

    def to_comparison(self, record: dict, responses: list[str]) -> dict | None:
        """A comparison record ``{"prompt", "responses": [best, ..., worst], "ranks"}``.

        Returns:
            None when fewer than two responses are given or all of them tie.
        """
        if "prompt" not in record:
            raise ValueError(f"record has no 'prompt' field: {record!r}")
        if len(responses) < 2:
            return None
        ranks = self.rank(record, responses)
        if max(ranks) == 0:
            return None
        order = sorted(range(len(responses)), key=lambda i: (ranks[i], i))
        return {
            "prompt": record["prompt"],
            "responses": [responses[i] for i in order],
            "ranks": [ranks[i] for i in order],
        }
