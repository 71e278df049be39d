"""Comparison records read and validated: ``{"prompt", "responses", ["ranks"]}`` (best first when ranks are absent)
or ``{"prompt", "chosen", "rejected"}``, each rule broken named by its record and field and by a reason that drops
are counted under (``on_invalid: drop``)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Optional

from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.records import FieldMap, Record, RecordError
from lit_rlhf.data.tokenize import render_prompt


class ComparisonError(RecordError):
    """A comparison record that breaks a rule; ``reason`` names the rule (the key drops are counted under)."""

    def __init__(self, record: Record, field_name: Optional[str], problem: str, reason: str):
        super().__init__(record.source, record.index, field_name, problem)
        self.reason = reason


@dataclass(frozen=True)
class Comparison:
    """One prompt (as the text the policy continues) and its responses with their ranks (lower is better)."""

    prompt: str
    responses: list[str]
    ranks: list[int]


def _present(record: Record, name: str) -> bool:
    return record.data.get(name) is not None  # datasets fills a missing column with None


def _response_list(record: Record, name: str) -> list[str]:
    """``responses``: a list of K >= 2 distinct, non-empty strings."""
    value = record.data[name]
    if not isinstance(value, (list, tuple)):
        raise ComparisonError(record, name, f"expected a list of strings, got {type(value).__name__}", "bad responses")
    if len(value) < 2:
        problem = f"needs at least 2 responses to compare, got {len(value)}"
        raise ComparisonError(record, name, problem, "fewer than 2 responses")
    for i, item in enumerate(value):
        _check_response(record, f"{name}[{i}]", item)
    _check_distinct(record, name, list(value))
    return list(value)


def _check_response(record: Record, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ComparisonError(record, name, f"expected a string, got {type(value).__name__}", "bad responses")
    if not value.strip():
        raise ComparisonError(record, name, "is empty", "empty response")
    return value


def _check_distinct(record: Record, name: str, responses: list[str]) -> None:
    first_seen: dict[str, int] = {}
    for i, response in enumerate(responses):
        if response in first_seen:
            raise ComparisonError(
                record,
                f"{name}[{i}]",
                f"repeats {name}[{first_seen[response]}]; a response may appear once per prompt",
                "repeated response",
            )
        first_seen[response] = i


def _rank_list(record: Record, name: str, num_responses: int, responses_name: str) -> list[int]:
    """``ranks``: one integer per response, lower is better, not all equal."""
    value = record.data[name]
    if not isinstance(value, (list, tuple)):
        raise ComparisonError(record, name, f"expected a list of integers, got {type(value).__name__}", "bad ranks")
    if len(value) != num_responses:
        raise ComparisonError(
            record, name, f"has {len(value)} ranks for {num_responses} responses in '{responses_name}'", "bad ranks"
        )
    for i, rank in enumerate(value):
        if isinstance(rank, bool) or not isinstance(rank, Integral):
            raise ComparisonError(record, f"{name}[{i}]", f"expected an integer rank, got {rank!r}", "bad ranks")
    if len(set(value)) < 2:
        raise ComparisonError(
            record, name, f"all responses are tied ({list(value)}): no pair to learn from", "all tied"
        )
    return [int(rank) for rank in value]


def parse_comparison(record: Record, fields: FieldMap, tokenizer: PreTrainedTokenizerBase) -> Comparison:
    """A validated :class:`Comparison` from ``{"prompt", "responses", ["ranks"]}`` (best first when
    ranks are absent) or ``{"prompt", "chosen", "rejected"}``. The prompt may be chat messages
    (``messages``, or a list-valued ``prompt``), rendered with the tokenizer's chat template.

    Raises:
        ComparisonError: naming the source, the record and the field.
    """
    responses_name, chosen_name, rejected_name = fields("responses"), fields("chosen"), fields("rejected")
    is_ranked = _present(record, responses_name)
    is_pair = _present(record, chosen_name) or _present(record, rejected_name)
    if is_ranked and is_pair:
        problem = f"has both '{responses_name}' and '{chosen_name}'/'{rejected_name}'; give one format"
        raise ComparisonError(record, None, problem, "ambiguous format")
    if not is_ranked and not is_pair:
        problem = (
            f"no comparison fields: expected '{responses_name}' (+ optional '{fields('ranks')}') or "
            f"'{chosen_name}'+'{rejected_name}' (record has: {', '.join(sorted(record.data)) or 'none'}; "
            "field names can be remapped with `fields`)"
        )
        raise ComparisonError(record, None, problem, "missing field")
    try:
        prompt = render_prompt(tokenizer, record, fields)
    except RecordError as e:
        raise ComparisonError(record, e.field_name, e.problem, "bad prompt") from None
    if is_pair:
        return Comparison(prompt, _pair_responses(record, chosen_name, rejected_name), [0, 1])
    responses = _response_list(record, responses_name)
    ranks_name = fields("ranks")
    if not _present(record, ranks_name):
        return Comparison(prompt, responses, list(range(len(responses))))  # listed best first
    return Comparison(prompt, responses, _rank_list(record, ranks_name, len(responses), responses_name))


def _pair_responses(record: Record, chosen_name: str, rejected_name: str) -> list[str]:
    """``[chosen, rejected]``: two different non-empty strings."""
    for name in (chosen_name, rejected_name):
        if not _present(record, name):
            raise ComparisonError(
                record, name, "missing (a pair record needs both chosen and rejected)", "missing field"
            )
        _check_response(record, name, record.data[name])
    if record.data[chosen_name] == record.data[rejected_name]:
        raise ComparisonError(record, rejected_name, f"is identical to '{chosen_name}'", "repeated response")
    return [record.data[chosen_name], record.data[rejected_name]]
