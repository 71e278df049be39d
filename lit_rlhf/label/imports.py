"""Reading the files the labeling app imports into item rows, every line checked before anything is written:
``lit-rlhf sample`` files (K responses to rank) and side-by-side pairs files (two policies' responses)."""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from lit_rlhf.data.records import DataSource, FieldMap, Record, RecordError, get_messages, get_str, read_records

#: The fields of a side-by-side pairs file line (``label serve --pairs``); any other field is kept as it is.
PAIR_FIELDS = ("prompt", "policy_a", "response_a", "policy_b", "response_b")

#: An item row as ``LabelStore`` inserts it: (content key, record JSON, prompt text, responses JSON, source, line).
ItemRow = tuple[str, str, str, str, str, int]


def pair_rows(pairs: DataSource) -> list[ItemRow]:
    """The rows of a side-by-side pairs file (JSONL, one comparison a line):
    ``{"id", "prompt" (or "messages"), "policy_a", "response_a", "policy_b", "response_b", ...}``. The two
    responses are stored as responses 0 (a) and 1 (b); the page shows them in a random left/right order."""
    rows = []
    for record in read_records(pairs):
        prompt_text = prompt_text_of(record, FieldMap({}))
        for name in PAIR_FIELDS[1:]:
            value = record.data.get(name)
            if not isinstance(value, str):
                problem = "missing" if value is None else f"expected a string, got {type(value).__name__}"
                raise RecordError(record.source, record.index, name, problem)
            if name.startswith("policy") and not value.strip():
                raise RecordError(record.source, record.index, name, "expected a policy name, got an empty string")
        if record.data["policy_a"] == record.data["policy_b"]:
            raise RecordError(
                record.source,
                record.index,
                "policy_b",
                f"names the same policy as policy_a ({record.data['policy_a']!r})",
            )
        responses = [record.data["response_a"], record.data["response_b"]]
        rows.append(_row(record, prompt_text, responses, exclude=("response_a", "response_b")))
    return rows


def sample_rows(samples: DataSource, fields: Optional[dict[str, str]] = None) -> tuple[list[ItemRow], int]:
    """The rows of a ``lit-rlhf sample`` file, and how many lines had fewer than two distinct non-empty responses
    (repeated and empty responses are dropped: a comparison needs distinct ones; such lines are not rows)."""
    field_map = FieldMap(fields or {})
    rows, too_few = [], 0
    for record in read_records(samples):
        prompt_text = prompt_text_of(record, field_map)
        responses = _distinct_responses(record, field_map("responses"))
        if len(responses) < 2:
            too_few += 1
            continue
        rows.append(_row(record, prompt_text, responses, exclude=(field_map("responses"),)))
    return rows, too_few


def prompt_text_of(record: Record, fields: FieldMap) -> str:
    """The prompt as the labeler reads it: the ``prompt`` string, or the chat turns one per paragraph."""
    if record.data.get(fields("prompt")) is not None or record.data.get(fields("messages")) is None:
        return get_str(record, fields, "prompt")
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in get_messages(record, fields))


def _row(record: Record, prompt_text: str, responses: list[str], exclude: tuple[str, ...]) -> ItemRow:
    data = {k: v for k, v in record.data.items() if k not in exclude}
    # The content key makes importing a file again add only its new lines.
    key = hashlib.sha256(json.dumps([data, responses], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return (
        key,
        json.dumps(data, ensure_ascii=False),
        prompt_text,
        json.dumps(responses, ensure_ascii=False),
        record.source,
        record.index,
    )


def _distinct_responses(record: Record, name: str) -> list[str]:
    value = record.data.get(name)
    if not isinstance(value, list):
        problem = "missing" if value is None else f"expected a list of strings, got {type(value).__name__}"
        raise RecordError(record.source, record.index, name, problem)
    for i, response in enumerate(value):
        if not isinstance(response, str):
            raise RecordError(
                record.source, record.index, f"{name}[{i}]", f"expected a string, got {type(response).__name__}"
            )
    return list(dict.fromkeys(r for r in value if r.strip()))
