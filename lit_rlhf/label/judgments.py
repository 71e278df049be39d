"""What a labeler may submit for one item, checked before anything is stored, and the rank arithmetic.

A ranking is submitted as tie groups, best first, each a list of response indices into the item's
stored responses: ``[[2], [0, 3], [1]]`` says response 2 is best, 0 and 3 tie, 1 is worst. Every
response appears exactly once. Ranks follow the comparison-record convention (lower is better,
equal ranks are ties): a response's rank is the index of its group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

#: The paper's per-response metadata (InstructGPT appendix B, table 3): key -> what the labeler sees.
FLAGS: dict[str, str] = {
    "fails_instruction": "Fails to follow the correct instruction / task",
    "inappropriate": "Inappropriate for customer assistant",
    "hallucination": "Hallucination",
    "satisfies_constraint": "Satisfies constraint provided in the instruction",
    "sexual": "Contains sexual content",
    "violent": "Contains violent content",
    "encourages_violence": "Encourages or fails to discourage violence/abuse/terrorism/self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "opinion": "Expresses opinion",
    "moral_judgment": "Expresses moral judgment",
}

#: The overall quality score of one response (paper: a 1-7 Likert scale).
SCORE_RANGE = (1, 7)
MAX_REWRITE_CHARS = 20_000


class SubmissionError(ValueError):
    """A submission that breaks a rule; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Judgment:
    """A validated judgment of one item: tie groups of response indices, and per-response metadata."""

    ranking: list[list[int]]
    scores: list[Optional[int]]
    flags: list[list[str]]
    rewrite: Optional[str] = None


def parse_judgment(payload: Any, num_responses: int) -> Judgment:
    """A :class:`Judgment` from a submitted JSON body, or :class:`SubmissionError` naming the field."""
    if not isinstance(payload, dict):
        raise SubmissionError("body: expected a JSON object")
    ranking = _parse_ranking(payload.get("ranking"), num_responses)
    scores = payload.get("scores")
    if scores is None:
        scores = [None] * num_responses
    if not isinstance(scores, list) or len(scores) != num_responses:
        raise SubmissionError(f"scores: expected a list of {num_responses} entries (an integer 1-7 or null each)")
    low, high = SCORE_RANGE
    for i, score in enumerate(scores):
        if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not low <= score <= high):
            raise SubmissionError(f"scores[{i}]: expected an integer from {low} to {high} or null, got {score!r}")
    flags = payload.get("flags")
    if flags is None:
        flags = [[] for _ in range(num_responses)]
    if not isinstance(flags, list) or len(flags) != num_responses:
        raise SubmissionError(f"flags: expected a list of {num_responses} lists of flag names")
    for i, names in enumerate(flags):
        if not isinstance(names, list):
            raise SubmissionError(f"flags[{i}]: expected a list of flag names")
        for name in names:
            if not isinstance(name, str) or name not in FLAGS:
                raise SubmissionError(f"flags[{i}]: unknown flag {name!r}; known: {', '.join(FLAGS)}")
    rewrite = payload.get("rewrite")
    if rewrite is not None and (not isinstance(rewrite, str) or len(rewrite) > MAX_REWRITE_CHARS):
        raise SubmissionError(f"rewrite: expected a string of at most {MAX_REWRITE_CHARS} characters or null")
    rewrite = rewrite if rewrite and rewrite.strip() else None
    return Judgment(ranking, list(scores), [sorted(set(names)) for names in flags], rewrite)


def _parse_ranking(value: Any, num_responses: int) -> list[list[int]]:
    if not isinstance(value, list) or not value:
        raise SubmissionError("ranking: expected a list of tie groups, best first, e.g. [[2], [0, 3], [1]]")
    seen: set[int] = set()
    for g, group in enumerate(value):
        if not isinstance(group, list) or not group:
            raise SubmissionError(f"ranking[{g}]: expected a non-empty list of response indices")
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_responses:
                raise SubmissionError(
                    f"ranking[{g}]: {index!r} is not a response index of this item (0..{num_responses - 1})"
                )
            if index in seen:
                raise SubmissionError(f"ranking[{g}]: response {index} is ranked twice")
            seen.add(index)
    if len(seen) != num_responses:
        missing = sorted(set(range(num_responses)) - seen)
        raise SubmissionError(
            f"ranking: ranks {len(seen)} responses but this item has {num_responses} (missing {missing})"
        )
    return [sorted(group) for group in value]


def ranks_from_groups(ranking: list[list[int]]) -> list[int]:
    """Rank of every response (by response index): the index of its tie group, so ties share a rank."""
    ranks = [0] * sum(len(group) for group in ranking)
    for group_rank, group in enumerate(ranking):
        for index in group:
            ranks[index] = group_rank
    return ranks


def positional_ranks(ranking: list[list[int]]) -> list[float]:
    """Fractional ranks (ties share the mean of the positions they occupy): comparable across labelers
    who used a different number of tie groups, which is what a mean-rank merge needs."""
    ranks = [0.0] * sum(len(group) for group in ranking)
    position = 0
    for group in ranking:
        shared = position + (len(group) - 1) / 2
        for index in group:
            ranks[index] = shared
        position += len(group)
    return ranks


def dense_ranks(values: list[float]) -> list[int]:
    """0-based dense ranks of ``values`` (lower is better): equal values share a rank."""
    order = {value: rank for rank, value in enumerate(sorted(set(values)))}
    return [order[value] for value in values]


def pair_preferences(ranks: list[int]) -> dict[tuple[int, int], int]:
    """For every response pair ``i < j``: +1 when i ranks better, -1 when j does, 0 for a tie."""
    return {
        (i, j): (ranks[i] < ranks[j]) - (ranks[i] > ranks[j])
        for i in range(len(ranks))
        for j in range(i + 1, len(ranks))
    }
