"""Record reading, validation, loss masks, padding, packing and length grouping."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl

from lit_rlhf.algorithms.lm import IGNORE_INDEX
from lit_rlhf.data.batching import LengthGroupedSampler, collate_examples, collate_packed, pack_examples, pad_sequences
from lit_rlhf.data.records import FieldMap, Record, RecordError, read_records
from lit_rlhf.data.tokenize import Example, encode_sft_record, render_prompt

# ---- reading ---------------------------------------------------------------------------------


def test_reads_every_file_type(tmp_path):
    rows = [{"prompt": "ab", "response": "cd"}, {"prompt": "ef", "response": "gh"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.txt").write_text("first line\n\nsecond line\n")
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet"):
        records = read_records(str(tmp_path / name))
        assert [r.data["response"] for r in records] == ["cd", "gh"], name
    text = read_records(str(tmp_path / "d.txt"))
    assert [(r.data["text"], r.index) for r in text] == [("first line", 1), ("second line", 3)]
    via_datasets = read_records({"path": "json", "data_files": str(tmp_path / "d.jsonl")})
    assert via_datasets[1].data["prompt"] == "ef"


def test_missing_file_and_bad_json_name_file_and_line(tmp_path):
    with pytest.raises(RecordError, match="nope.jsonl: file not found"):
        read_records(str(tmp_path / "nope.jsonl"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, '{"prompt": "a", '])
    with pytest.raises(RecordError, match=r"bad.jsonl: record 2: not valid JSON"):
        read_records(str(bad))
    not_object = write_jsonl(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(RecordError, match=r"record 1: expected a JSON object, got list"):
        read_records(str(not_object))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"prompt": "a"}, r"record 7: field 'response': missing"),
        ({"prompt": "a", "response": "  "}, r"field 'response': is empty"),
        ({"prompt": 3, "response": "b"}, r"field 'prompt': expected a string, got int"),
        ({"foo": "a"}, r"no known fields"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, r"messages\[0\].role': roles out of order"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, r"roles out of order"),
        ({"messages": [{"role": "user", "content": "x"}]}, r"last message must be from the assistant"),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
            r"messages\[0\].content",
        ),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\].role': expected one of"),
        ({"messages": "hi"}, r"field 'messages': expected a non-empty list"),
    ],
)
def test_bad_sft_records_name_record_and_field(tiny_tokenizer, data, match):
    with pytest.raises(RecordError, match=match) as error:
        encode_sft_record(tiny_tokenizer, Record(data, "train.jsonl", 7), FieldMap())
    assert str(error.value).startswith("train.jsonl: record 7")


def test_messages_need_a_chat_template(tmp_path):
    from conftest import build_char_tokenizer

    from lit_rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(build_char_tokenizer(tmp_path / "tok", chat_template=None)))
    record = Record(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "f.jsonl", 2
    )
    with pytest.raises(RecordError, match="f.jsonl: record 2: field 'messages': this tokenizer has no chat template"):
        encode_sft_record(tokenizer, record, FieldMap())


# ---- loss masks (character tokenizer: one token per character) --------------------------------


def _tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_prompt_response_mask_covers_response_and_eos_only(tiny_tokenizer):
    example = encode_sft_record(
        tiny_tokenizer, Record({"q": "ab", "a": "cd"}, "f", 1), FieldMap({"prompt": "q", "response": "a"})
    )
    assert _tokens(tiny_tokenizer, example.input_ids) == ["a", "b", "c", "d", "<eos>"]
    assert example.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert example.labels[2:] == example.input_ids[2:]


def test_text_mask_covers_every_token(tiny_tokenizer):
    example = encode_sft_record(tiny_tokenizer, Record({"text": "xyz"}, "f", 1), FieldMap())
    assert _tokens(tiny_tokenizer, example.input_ids) == ["x", "y", "z", "<eos>"]
    assert example.labels == example.input_ids


def test_chat_mask_covers_assistant_turns_only(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "ok"},
    ]
    example = encode_sft_record(tiny_tokenizer, Record({"messages": messages}, "f", 1), FieldMap())
    tokens = _tokens(tiny_tokenizer, example.input_ids)
    assert "".join(tokens) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    trained = "".join(t for t, label in zip(tokens, example.labels) if label != IGNORE_INDEX)
    assert trained == "yo\nok\n"  # the assistant contents and the template's end of their turns
    first_trained = example.labels.index(next(label for label in example.labels if label != IGNORE_INDEX))
    assert tokens[first_trained - 1] == "<|assistant|>"


def test_render_prompt_for_prompt_and_messages(tiny_tokenizer):
    assert render_prompt(tiny_tokenizer, Record({"prompt": "2+2?"}, "f", 1), FieldMap()) == "2+2?"
    chat = Record({"messages": [{"role": "user", "content": "hi"}]}, "f", 1)
    assert render_prompt(tiny_tokenizer, chat, FieldMap()) == "<|user|>hi\n<|assistant|>"


# ---- padding, packing, grouping ---------------------------------------------------------------


def test_pad_sequences_left_and_right():
    ids, mask = pad_sequences([[5, 6, 7], [8]], 0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_sequences([[5, 6, 7], [8]], 0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_masks_padding_in_labels():
    batch = collate_examples([Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])], pad_id=0)
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_packing_restarts_positions_and_isolates_examples(tiny_dir):
    examples = [Example([1, 2, 3], [1, 2, 3]), Example([4, 5], [4, 5]), Example([6, 7, 8, 9], [6, 7, 8, 9])]
    rows = pack_examples(examples, max_length=6)
    assert sorted(sum(len(e.input_ids) for e in row) for row in rows) == [3, 6]  # first fit decreasing: 4+2, 3
    batch = collate_packed(rows, pad_id=0)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist()[0][:4] == [0, 1, 2, 3]
    # Block-diagonal attention: the second example's logits do not depend on the first one.
    from lit_rlhf.models.loading import load_causal_lm

    model = load_causal_lm(str(tiny_dir / "config.json"), trainable=False)
    alone = model(input_ids=torch.tensor([[20, 21, 22]]), use_cache=False).logits
    # use_cache=False as in training: transformers only detects packing when no KV cache is built.
    packed = model(
        input_ids=torch.tensor([[30, 31, 20, 21, 22]]), position_ids=torch.tensor([[0, 1, 0, 1, 2]]), use_cache=False
    ).logits
    torch.testing.assert_close(packed[:, 2:], alone, atol=1e-5, rtol=1e-4)


def test_length_grouped_sampler_groups_lengths_and_covers_all():
    lengths = [(i * 37) % 101 for i in range(400)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, group_factor=10, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    batches = [order[i : i + 8] for i in range(0, 400, 8)]
    spread = sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches) / len(batches)
    random_spread = (
        sum(
            max(lengths[j] for j in range(i, i + 8)) - min(lengths[j] for j in range(i, i + 8))
            for i in range(0, 400, 8)
        )
        / 50
    )
    assert spread < random_spread / 4
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_data_seed_defaults_to_seed_everything(tmp_path, monkeypatch):
    from lightning.pytorch import seed_everything

    from lit_rlhf.data import SFTDataModule

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert SFTDataModule(train="x.jsonl").hparams.seed == 0
    seed_everything(7)
    assert SFTDataModule(train="x.jsonl").hparams.seed == 7  # a new --seed_everything changes the data order
    assert SFTDataModule(train="x.jsonl", seed=3).hparams.seed == 3
