"""Public dataset layouts, read directly: each is converted into the canonical records of a stage.

Every data module takes ``format`` (``auto`` detects it from the first record and prints what it
found). The canonical ("native") records are those of docs/data.md; the public layouts are:

- ``hh_rlhf`` (sft, rm, ppo): ``{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": ...}``
- ``conversational`` (sft, rm, ppo; TRL's layout): ``{"prompt"?: [msgs], "chosen": [msgs], "rejected": [msgs]}``
- ``ultrafeedback`` (sft, rm, ppo): ``{"instruction", "completions": [{"response", "fine-grained_score"}, ...]}``
- ``nectar`` (sft, rm, ppo): ``{"prompt": "\\n\\nHuman: q\\n\\nAssistant:", "answers": [{"answer", "rank"}, ...]}``
- ``alpaca`` (sft, ppo): ``{"instruction", "input", "output"}``
- ``sharegpt`` (sft, ppo): ``{"conversations": [{"from": "human" | "gpt" | "system", "value"}, ...]}``

Comparison layouts give SFT their best response and PPO their prompt. Transcripts (HH, Nectar's
prompts) become chat messages when the tokenizer has a chat template, so a chat model sees its own
template; without one they stay the original text. Field names of every layout can be remapped with
the data module's ``fields`` (e.g. ``{"score": "overall_score"}`` picks UltraFeedback's score field;
a dotted name such as ``annotations.helpfulness.Rating`` reaches into each completion).

Converted records keep their source and record number, and every problem is reported with the
field name of the user's file.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info

from lit_rlhf.data.layouts import DEMONSTRATION_FORMATS, PARSERS, FormatError, Parsed
from lit_rlhf.data.records import FieldMap, Record, RecordError

#: The values of a data module's ``format`` setting.
DataFormat = Literal["auto", "native", "hh_rlhf", "conversational", "ultrafeedback", "nectar", "alpaca", "sharegpt"]
Stage = Literal["sft", "comparisons", "prompts"]


# ----------------------------------------------------------------------------------------------
# Detection and conversion


def detect_format(record: Record, fields: FieldMap) -> str:
    """The layout of ``record`` from the fields it has; ``native`` when no public layout matches."""

    def has(canonical: str) -> bool:
        return record.data.get(fields(canonical)) is not None

    if has("conversations"):
        return "sharegpt"
    if has("completions"):
        return "ultrafeedback"
    if has("answers"):
        return "nectar"
    if has("instruction") and (has("output") or fields("input") in record.data):
        return "alpaca"
    if has("chosen") or has("rejected"):
        chosen = record.data.get(fields("chosen"), record.data.get(fields("rejected")))
        if isinstance(chosen, (list, tuple)):
            return "conversational"
        if isinstance(chosen, str) and not has("prompt") and "\n\nAssistant:" in chosen:
            return "hh_rlhf"
        return "native"
    prompt = record.data.get(fields("prompt"))
    if (
        isinstance(prompt, str)
        and prompt.lstrip().startswith("Human:")
        and "\n\nAssistant:" in prompt
        and not has("response")
    ):
        return "hh_rlhf"  # a prompt transcript, as Nectar's or HH-derived prompt sets have
    return "native"


def _sft_record(parsed: Parsed, record: Record, fmt: str) -> dict:
    """A demonstration: the whole chat, or the prompt with its best response (lowest rank, first among equals)."""
    if parsed.conversation is not None:
        return {"messages": parsed.conversation}
    if not parsed.responses:
        problem = f"holds no demonstration for SFT ({fmt} records need their response here)"
        raise FormatError(record, parsed.responses_field, problem, "missing field")
    best = parsed.responses[parsed.ranks.index(min(parsed.ranks))]
    if isinstance(parsed.prompt, list):
        return {"messages": parsed.prompt + [{"role": "assistant", "content": best}]}
    return {"prompt": parsed.prompt, "response": best}


def _comparison_record(parsed: Parsed, record: Record, fmt: str) -> dict:
    if not parsed.responses:
        raise FormatError(
            record, parsed.responses_field, f"missing: a {fmt} comparison needs its responses", "missing field"
        )
    return {"prompt": parsed.prompt, "responses": parsed.responses, "ranks": parsed.ranks}


def _prompt_record(parsed: Parsed, record: Record, fmt: str) -> dict:
    # The record's other fields ride along: rewards may read them (e.g. a reference answer).
    return {**{k: v for k, v in record.data.items() if k != "messages"}, "prompt": parsed.prompt}


LAYOUTS = {"sft": _sft_record, "comparisons": _comparison_record, "prompts": _prompt_record}
CHAT_ONLY_FORMATS = ("conversational", "sharegpt")


def convert_records(
    records: list[Record],
    format: DataFormat,
    stage: Stage,
    fields: FieldMap,
    tokenizer: Any,
    *,
    on_invalid: str = "error",
    counter: Any = None,
) -> tuple[list[Record], FieldMap]:
    """``records`` in the canonical layout of ``stage``, and the field map to read them with.

    ``format="auto"`` detects the layout from the first record and prints it. Native records pass
    through untouched (with the user's ``fields``); converted ones carry canonical field names.
    With ``on_invalid="drop"`` a record that does not fit is counted on ``counter`` (a
    :class:`~lit_rlhf.data.common.DropCounter`) under its reason and skipped.

    Raises:
        RecordError: a record that does not fit its layout (file, record and field named), or a
            layout that cannot feed this stage.
    """
    if not records:
        return records, fields
    source = records[0].source
    fmt = detect_format(records[0], fields) if format == "auto" else format
    if fmt not in ("native", *PARSERS):
        raise RecordError(source, None, None, f"unknown format {fmt!r}; expected auto, native, {', '.join(PARSERS)}")
    rank_zero_info(f"{source}: {fmt} records{' (detected; set `format` to choose)' if format == 'auto' else ''}")
    if fmt == "native":
        return records, fields
    if stage == "comparisons" and fmt in DEMONSTRATION_FORMATS:
        raise RecordError(
            source, None, None, f"{fmt} records are demonstrations, not comparisons: use them for SFT or PPO prompts"
        )
    chat = bool(getattr(tokenizer, "chat_template", None))
    if fmt in CHAT_ONLY_FORMATS and not chat:
        raise RecordError(
            source, None, None, f"{fmt} records are chats, and the tokenizer has no chat template to render them"
        )
    parse, layout = PARSERS[fmt], LAYOUTS[stage]
    converted = []
    for record in records:
        try:
            parsed = parse(record, fields, chat, prompt_only=stage == "prompts")
            converted.append(Record(layout(parsed, record, fmt), record.source, record.index))
        except FormatError as e:
            if on_invalid != "drop" or counter is None:
                raise
            counter.add(e.reason)
    return converted, FieldMap()
