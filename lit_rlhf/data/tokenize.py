"""Turning validated records into token ids and loss masks, identically for every stage.

Label convention: ``labels[i]`` is the token at position ``i`` when position ``i`` is trained on,
and ``IGNORE_INDEX`` otherwise (HF shifts labels inside the loss; lit-rlhf does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import PreTrainedTokenizerBase

from lit_rlhf.algorithms.lm import IGNORE_INDEX
from lit_rlhf.data.records import FieldMap, Record, get_messages, get_str


@dataclass
class Example:
    """Token ids of one training sequence and its labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, *, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _eos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def encode_prompt_response(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> Example:
    """``prompt + response + eos``, with loss on the response and eos only.

    Prompt and response are tokenised separately, exactly as at generation time, where the
    response is sampled after the prompt's own tokens.
    """
    prompt_ids = _ids(tokenizer, prompt, special=True)
    response_ids = _ids(tokenizer, response, special=False) + _eos(tokenizer)
    return Example(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> Example:
    """Pretraining text: loss on every token."""
    ids = _ids(tokenizer, text, special=True) + _eos(tokenizer)
    return Example(ids, list(ids))


def fit_to_length(
    example: Example,
    max_length: int,
    truncation: str,
    record: Record,
    counter=None,
    *,
    option: str = "max_length",
    what: str = "sequence",
) -> Optional[Example]:
    """The one truncation policy of every stage, for a sequence longer than ``max_length`` tokens.

    ``left`` keeps its last tokens (PPO prompts, RM sequences: the end is what is continued or scored),
    ``right`` its first (SFT and pretraining text), each counted as kept in ``counter``; ``drop`` returns
    None (counted as ``over <option>``, unless ``counter`` is None because the caller counts whole records);
    ``error`` raises naming the record.
    """
    length = len(example.input_ids)
    if length <= max_length:
        return example
    if truncation == "error":
        raise record.error(None, f"{what} is {length} tokens long, over {option}={max_length}")
    if truncation == "drop":
        if counter is not None:
            counter.add(f"over {option}", record)
        return None
    if counter is not None:
        counter.add(f"{what}s truncated on the {truncation} (kept)", record)
    kept = slice(length - max_length, length) if truncation == "left" else slice(0, max_length)
    return Example(example.input_ids[kept], example.labels[kept])


def require_chat_template(tokenizer: PreTrainedTokenizerBase, record: Record, fields: FieldMap) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise record.error(
            fields("messages"),
            "this tokenizer has no chat template, so 'messages' records cannot be rendered; use a tokenizer with a "
            "chat_template or give {'prompt', 'response'} records",
        )


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], record: Record, fields: FieldMap
) -> Example:
    """A conversation rendered with the chat template, with loss on the assistant turns only.

    The template is rendered once per assistant turn: the text before the turn (with the generation
    prompt) and the text through the turn; their difference is the assistant's part. This works
    for any template that renders conversations incrementally, which chat templates do.
    """
    require_chat_template(tokenizer, record, fields)
    input_ids: list[int] = []
    labels: list[int] = []
    rendered_upto = ""
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False)
        if not before.startswith(rendered_upto) or not through.startswith(before):
            raise record.error(fields("messages"), "the chat template does not render this conversation incrementally")
        context_ids = _ids(tokenizer, before[len(rendered_upto) :], special=not input_ids)
        answer_ids = _ids(tokenizer, through[len(before) :], special=False)
        input_ids += context_ids + answer_ids
        labels += [IGNORE_INDEX] * len(context_ids) + answer_ids
        rendered_upto = through
    return Example(input_ids, labels)


def render_prompt(tokenizer: PreTrainedTokenizerBase, record: Record, fields: FieldMap) -> str:
    """The prompt text a policy continues: ``prompt`` as is, or ``messages`` (or a list-valued
    ``prompt``) rendered with the chat template and its generation prompt."""
    name = fields("messages") if fields("messages") in record.data else fields("prompt")
    value = record.data.get(name)
    if isinstance(value, list):
        messages = get_messages(
            Record({fields("messages"): value}, record.source, record.index), fields, must_end_with="user"
        )
        require_chat_template(tokenizer, record, fields)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return get_str(record, fields, "prompt")


def encode_sft_record(tokenizer: PreTrainedTokenizerBase, record: Record, fields: FieldMap) -> Example:
    """Any SFT record: ``messages`` (loss on assistant turns), ``prompt``/``response`` (loss on the
    response), or ``text`` (loss on every token)."""
    data = record.data
    if fields("messages") in data:
        other = [fields(name) for name in ("prompt", "response", "text") if data.get(fields(name)) is not None]
        if other:  # one of the two would be silently ignored
            raise record.error(None, f"has both '{fields('messages')}' and '{other[0]}'; give one format per record")
        return encode_chat(tokenizer, get_messages(record, fields, must_end_with="assistant"), record, fields)
    if fields("prompt") in data or fields("response") in data:
        return encode_prompt_response(tokenizer, get_str(record, fields, "prompt"), get_str(record, fields, "response"))
    if fields("text") in data:
        return encode_text(tokenizer, get_str(record, fields, "text"))
    raise record.error(
        None,
        f"no known fields: expected '{fields('prompt')}'+'{fields('response')}', '{fields('messages')}' or "
        f"'{fields('text')}' (record has: {', '.join(sorted(data)) or 'none'}; field names can be remapped with "
        "`fields`)",
    )
