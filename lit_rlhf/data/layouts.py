"""The parsers of the public dataset layouts: each reads one record into a :class:`Parsed` (prompt, ranked
responses or a whole chat), naming the field of the user's file in every problem. :mod:`lit_rlhf.data.formats`
detects the layout and lays the parsed records out for a stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, Optional, Union

from lit_rlhf.data.records import FieldMap, Record, RecordError, get_messages

#: UltraFeedback's score field unless ``fields`` maps ``score`` elsewhere: the mean of the four annotated ratings.
DEFAULT_SCORE_FIELD = "fine-grained_score"
#: Layouts that hold no comparisons (no RM data).
DEMONSTRATION_FORMATS = ("alpaca", "sharegpt")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

Prompt = Union[str, list]  # text, or chat messages ending with a user turn


class FormatError(RecordError):
    """A record that does not fit its format; ``reason`` is the key under which ``on_invalid: drop`` counts it."""

    def __init__(self, record: Record, field_name: Optional[str], problem: str, reason: str):
        super().__init__(record.source, record.index, field_name, problem)
        self.reason = reason


@dataclass
class Parsed:
    """What a public record holds, before it is laid out for a stage.

    Attributes:
        prompt: The prompt as text, or chat messages that end with a user turn.
        responses_field: The field of the record that holds the responses (named in errors).
        responses: Candidate responses with their ``ranks`` (lower is better, equal = tie); a
            demonstration layout gives its one response. None for a prompt-only record.
        conversation: A whole multi-turn chat ending with an assistant turn (ShareGPT), or None.
    """

    prompt: Prompt
    responses_field: str
    responses: Optional[list[str]] = None
    ranks: Optional[list[int]] = None
    conversation: Optional[list[dict[str, str]]] = None


# ----------------------------------------------------------------------------------------------
# Field access


def _value(record: Record, name: str, *, required: bool = True) -> Any:
    value = record.data.get(name)
    if value is None and required:
        raise FormatError(
            record, name, f"missing (record has fields: {', '.join(sorted(record.data)) or 'none'})", "missing field"
        )
    return value


def _text(record: Record, name: str, value: Any, *, reason: str = "bad field", allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FormatError(record, name, f"expected a string, got {type(value).__name__}", reason)
    if not allow_empty and not value.strip():
        raise FormatError(record, name, "is empty", "empty response" if reason == "bad responses" else reason)
    return value


def _items(record: Record, name: str, value: Any, min_items: int, reason: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise FormatError(record, name, f"expected a list, got {type(value).__name__}", reason)
    if len(value) < min_items:
        problem = f"needs at least {min_items} items, got {len(value)}"
        raise FormatError(record, name, problem, "fewer than 2 responses" if min_items == 2 else reason)
    return list(value)


def _dotted(record: Record, item: Any, where: str, path: str) -> Any:
    """``item[a][b]...`` for ``path = "a.b..."``, naming ``where.a.b`` when a step is missing."""
    for part in path.split("."):
        where = f"{where}.{part}"
        if not isinstance(item, Mapping) or item.get(part) is None:
            raise FormatError(record, where, "missing", "missing field")
        item = item[part]
    return item


def _number(record: Record, where: str, value: Any) -> float:
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise FormatError(record, where, f"expected a number, got {value!r}", "bad ranks")


def _check_comparison(record: Record, name: str, responses: list[str], ranks: list[int]) -> None:
    """A response may appear once, and not every response may be tied (nothing to learn)."""
    seen: dict[str, int] = {}
    for i, response in enumerate(responses):
        if response in seen:
            raise FormatError(
                record,
                f"{name}[{i}]",
                f"repeats {name}[{seen[response]}]; a response may appear once per prompt",
                "repeated response",
            )
        seen[response] = i
    if len(set(ranks)) < 2:
        raise FormatError(record, name, f"all responses are tied ({ranks}): no pair to learn from", "all tied")


def _dense_ranks(scores: list[float]) -> list[int]:
    """Rank 0 for the highest score; equal scores share a rank (ties yield no pair)."""
    order = sorted(set(scores), reverse=True)
    return [order.index(s) for s in scores]


def _messages(record: Record, name: str, value: Any, *, must_end_with: Optional[str]) -> list[dict[str, str]]:
    """Chat messages ``[{"role", "content"}]`` validated as native ``messages``, errors naming ``name``."""
    try:
        return get_messages(
            Record({name: value}, record.source, record.index),
            FieldMap({"messages": name}),
            must_end_with=must_end_with,
        )
    except RecordError as e:
        raise FormatError(record, e.field_name, e.problem, "bad messages") from None


# ----------------------------------------------------------------------------------------------
# Transcripts: "\n\nHuman: ...\n\nAssistant: ..."


def _transcript_turns(record: Record, name: str, text: str) -> list[tuple[str, str]]:
    """``[(role, raw content)]`` of an Anthropic-style transcript, Human first and alternating."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if parts[0].strip() or len(parts) < 3:
        raise FormatError(
            record,
            name,
            "expected a transcript of '\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns",
            "bad transcript",
        )
    turns = [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
    for i, (speaker, _) in enumerate(turns):
        expected = "Human" if i % 2 == 0 else "Assistant"
        if speaker != expected:
            raise FormatError(
                record,
                name,
                f"turn {i + 1} is from {speaker}, expected {expected} (turns alternate, Human first)",
                "bad transcript",
            )
    return turns


def _transcript_prompt(record: Record, name: str, turns: list[tuple[str, str]], prefix_text: str, chat: bool) -> Prompt:
    """The turns before the last Assistant turn: chat messages (each content stripped), or the original text."""
    for i, (speaker, content) in enumerate(turns):
        if not content.strip():
            raise FormatError(record, name, f"turn {i + 1} ({speaker}) is empty", "bad transcript")
    if not chat:
        return prefix_text
    return [{"role": _HH_ROLES[speaker], "content": content.strip()} for speaker, content in turns]


def parse_hh_rlhf(record: Record, fields: FieldMap, chat: bool, prompt_only: bool = False) -> Parsed:
    """HH-RLHF: two transcripts that differ only in their last Assistant turn (the prompt is their shared
    prefix). A record with only a ``prompt`` transcript ending in ``Assistant:`` is a prompt."""
    chosen_name, rejected_name = fields("chosen"), fields("rejected")
    if record.data.get(chosen_name) is None and record.data.get(rejected_name) is None:
        return Parsed(_transcript_only_prompt(record, fields("prompt"), chat), chosen_name)
    texts, finals = {}, {}
    for name in (chosen_name,) if prompt_only else (chosen_name, rejected_name):
        text = _text(record, name, _value(record, name), reason="bad transcript")
        turns = _transcript_turns(record, name, text)
        if turns[-1][0] != "Assistant":
            raise FormatError(record, name, "the last turn must be from the Assistant (the response)", "bad transcript")
        texts[name], finals[name] = (text, turns), turns[-1][1]
    chosen_text, chosen_turns = texts[chosen_name]
    cut = chosen_text.rindex("\n\nAssistant:") + len("\n\nAssistant:")
    prompt = _transcript_prompt(record, chosen_name, chosen_turns[:-1], chosen_text[:cut], chat)
    if prompt_only:
        return Parsed(prompt, chosen_name)
    if chosen_turns[:-1] != texts[rejected_name][1][:-1]:
        problem = f"does not share the conversation of '{chosen_name}' up to its last Assistant turn"
        raise FormatError(record, rejected_name, problem, "bad transcript")
    responses = [
        _text(record, name, finals[name].strip() if chat else finals[name], reason="bad responses")
        for name in (chosen_name, rejected_name)
    ]
    if responses[0] == responses[1]:
        raise FormatError(
            record, rejected_name, f"has the same last Assistant turn as '{chosen_name}'", "repeated response"
        )
    return Parsed(prompt, chosen_name, responses, [0, 1])


def _transcript_only_prompt(record: Record, name: str, chat: bool) -> Prompt:
    """A transcript that ends with an empty ``Assistant:`` turn, the point where the response starts (Nectar)."""
    text = _text(record, name, _value(record, name), reason="bad prompt")
    turns = _transcript_turns(record, name, text)
    if turns[-1][0] != "Assistant" or turns[-1][1].strip():
        raise FormatError(
            record, name, "a prompt transcript must end with an empty '\\n\\nAssistant:' turn", "bad prompt"
        )
    return _transcript_prompt(record, name, turns[:-1], text.rstrip(), chat)


# ----------------------------------------------------------------------------------------------
# The other layouts


def parse_conversational(record: Record, fields: FieldMap, chat: bool, prompt_only: bool = False) -> Parsed:
    """TRL's conversational preference layout: ``chosen``/``rejected`` message lists, the prompt either a
    separate ``prompt`` message list or the messages both share before their final assistant message.
    A string ``prompt`` beside full conversations (``ultrafeedback_binarized``) is their first user turn."""
    prompt_name, chosen_name, rejected_name = fields("prompt"), fields("chosen"), fields("rejected")
    chosen = _items(record, chosen_name, _value(record, chosen_name), 1, "bad messages")
    rejected = _items(record, rejected_name, _value(record, rejected_name), 1, "bad messages")
    prompt_value = record.data.get(prompt_name)
    if isinstance(prompt_value, str) and len(chosen) == 1:  # a single-turn prompt given as text
        prompt_value = [{"role": "user", "content": _text(record, prompt_name, prompt_value, reason="bad prompt")}]
    if isinstance(prompt_value, (list, tuple)):
        prompt = _messages(record, prompt_name, prompt_value, must_end_with="user")
        lists = {chosen_name: chosen, rejected_name: rejected}
    else:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if not shared:
            raise FormatError(
                record,
                chosen_name,
                f"shares no prompt messages with '{rejected_name}' (and there is no '{prompt_name}')",
                "bad messages",
            )
        prompt = _messages(record, chosen_name, chosen[:shared], must_end_with="user")
        lists = {chosen_name: chosen[shared:], rejected_name: rejected[shared:]}
    responses = []
    for name, messages in lists.items():
        if len(messages) != 1:
            raise FormatError(
                record, name, f"expected one assistant message after the prompt, got {len(messages)}", "bad messages"
            )
        message = messages[0]
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            raise FormatError(
                record, name, "the response must be one {'role': 'assistant', 'content'} message", "bad messages"
            )
        responses.append(_text(record, f"{name}[-1].content", message.get("content"), reason="bad responses"))
    if responses[0] == responses[1]:
        raise FormatError(record, rejected_name, f"has the same response as '{chosen_name}'", "repeated response")
    return Parsed(prompt, chosen_name, responses, [0, 1])


def _single_turn_prompt(text: str, chat: bool) -> Prompt:
    return [{"role": "user", "content": text}] if chat else text


def _scored_responses(
    record: Record, name: str, value: list, text_name: str, score_path: str
) -> tuple[list[str], list[float]]:
    """K >= 2 objects, each with a response text and a number (UltraFeedback completions, Nectar answers)."""
    responses, scores = [], []
    for i, item in enumerate(_items(record, name, value, 2, "bad responses")):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            raise FormatError(record, where, f"expected an object, got {type(item).__name__}", "bad responses")
        responses.append(_text(record, f"{where}.{text_name}", item.get(text_name), reason="bad responses"))
        scores.append(_number(record, f"{where}.{score_path}", _dotted(record, item, where, score_path)))
    return responses, scores


def parse_ultrafeedback(record: Record, fields: FieldMap, chat: bool, prompt_only: bool = False) -> Parsed:
    """UltraFeedback: an ``instruction`` and K ``completions``, ranked by a score field (equal scores tie)."""
    prompt_name = fields("instruction") if record.data.get(fields("instruction")) is not None else fields("prompt")
    prompt = _text(record, prompt_name, _value(record, prompt_name), reason="bad prompt")
    completions_name = fields("completions")
    completions = _items(record, completions_name, _value(record, completions_name), 0, "bad responses")
    if not completions or prompt_only:  # PPO prompts: the completions are not read
        return Parsed(_single_turn_prompt(prompt, chat), completions_name)
    score_path = fields.names.get("score", DEFAULT_SCORE_FIELD)
    responses, scores = _scored_responses(record, completions_name, completions, fields("response"), score_path)
    ranks = _dense_ranks(scores)
    _check_comparison(record, completions_name, responses, ranks)
    return Parsed(_single_turn_prompt(prompt, chat), completions_name, responses, ranks)


def parse_nectar(record: Record, fields: FieldMap, chat: bool, prompt_only: bool = False) -> Parsed:
    """Nectar: a transcript ``prompt`` ending in ``Assistant:`` and K ``answers`` with a ``rank`` each (1 = best)."""
    prompt = _transcript_only_prompt(record, fields("prompt"), chat)
    answers_name = fields("answers")
    answers = _items(record, answers_name, _value(record, answers_name), 0, "bad responses")
    if not answers or prompt_only:
        return Parsed(prompt, answers_name)
    responses, scores = _scored_responses(record, answers_name, answers, fields("answer"), fields("rank"))
    for i, rank in enumerate(scores):
        if rank != int(rank):
            raise FormatError(
                record, f"{answers_name}[{i}].{fields('rank')}", f"expected an integer rank, got {rank}", "bad ranks"
            )
    ranks = [int(rank) for rank in scores]
    _check_comparison(record, answers_name, responses, ranks)
    return Parsed(prompt, answers_name, responses, ranks)


def parse_alpaca(record: Record, fields: FieldMap, chat: bool, prompt_only: bool = False) -> Parsed:
    """Alpaca: ``instruction``, optional ``input`` (context), ``output`` (the demonstration; optional for prompts)."""
    instruction = _text(record, fields("instruction"), _value(record, fields("instruction")), reason="bad prompt")
    context = record.data.get(fields("input")) or ""
    context = _text(record, fields("input"), context, reason="bad prompt", allow_empty=True).strip()
    if chat:
        prompt: Prompt = [{"role": "user", "content": f"{instruction}\n\n{context}" if context else instruction}]
    else:
        prompt = (
            f"### Instruction:\n{instruction}\n\n"
            + (f"### Input:\n{context}\n\n" if context else "")
            + "### Response:\n"
        )
    output = record.data.get(fields("output"))
    if output is None:
        return Parsed(prompt, fields("output"))
    return Parsed(prompt, fields("output"), [_text(record, fields("output"), output, reason="bad responses")], [0])


def parse_sharegpt(record: Record, fields: FieldMap, chat: bool, prompt_only: bool = False) -> Parsed:
    """ShareGPT: ``conversations`` of ``{"from", "value"}`` turns (human/gpt/system), a chat."""
    name, from_name, value_name = fields("conversations"), fields("from"), fields("value")
    turns = _items(record, name, _value(record, name), 1, "bad messages")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, Mapping):
            raise FormatError(
                record,
                where,
                f"expected an object with '{from_name}' and '{value_name}', got {type(turn).__name__}",
                "bad messages",
            )
        role = SHAREGPT_ROLES.get(str(turn.get(from_name)).lower())
        if role is None:
            raise FormatError(
                record,
                f"{where}.{from_name}",
                f"expected one of {', '.join(SHAREGPT_ROLES)}, got {turn.get(from_name)!r}",
                "bad messages",
            )
        messages.append(
            {
                "role": role,
                "content": _text(record, f"{where}.{value_name}", turn.get(value_name), reason="bad messages"),
            }
        )
    # Role order is checked as for native messages, then reported with this layout's field names.
    try:
        messages = get_messages(Record({"m": messages}, record.source, record.index), FieldMap({"messages": "m"}))
    except RecordError as e:
        field = (e.field_name or "m").replace("m[", f"{name}[", 1).replace(".role", f".{from_name}")
        raise FormatError(record, name if field == "m" else field, e.problem, "bad messages") from None
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise FormatError(record, name, "has no human turn", "bad messages")
    ends_with_answer = messages[-1]["role"] == "assistant"
    return Parsed(messages[: last_user + 1], name, conversation=messages if ends_with_answer else None)


#: format -> parser ``(record, fields, chat, prompt_only) -> Parsed``; ``prompt_only`` (PPO prompts) leaves the
#: responses unread, so a problem there (a repeated Nectar answer) does not stop a prompt set.
PARSERS = {
    "hh_rlhf": parse_hh_rlhf,
    "conversational": parse_conversational,
    "ultrafeedback": parse_ultrafeedback,
    "nectar": parse_nectar,
    "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt,
}
