"""Public data layouts (issue 16 part 1): each loads from a small hand-written file into every stage it can
feed, is detected with ``format: auto``, and a malformed file names the file, the record and the field."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import build_char_tokenizer, write_jsonl

from lit_rlhf.algorithms.lm import IGNORE_INDEX
from lit_rlhf.data import PromptDataModule, RewardDataModule, SFTDataModule
from lit_rlhf.data.formats import convert_records, detect_format
from lit_rlhf.data.records import FieldMap, RecordError, read_records

HH = [
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color\n\nAssistant: Blue",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color\n\nAssistant: No",
    },
]
CONVERSATIONAL = [
    {
        "chosen": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Blue"}],
        "rejected": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Green"}],
    },
    {
        "prompt": [{"role": "user", "content": "Grass color?"}],
        "chosen": [{"role": "assistant", "content": "Green"}],
        "rejected": [{"role": "assistant", "content": "Red"}],
    },
    # ultrafeedback_binarized: a text prompt beside the whole conversations
    {
        "prompt": "Sea color?",
        "chosen": [{"role": "user", "content": "Sea color?"}, {"role": "assistant", "content": "Blue"}],
        "rejected": [{"role": "user", "content": "Sea color?"}, {"role": "assistant", "content": "Pink"}],
        "score_chosen": 8.0,
    },
    {
        "prompt": "Snow color?",
        "chosen": [{"role": "assistant", "content": "White"}],
        "rejected": [{"role": "assistant", "content": "Red"}],
    },
]


def _completion(response: str, score, helpfulness: str) -> dict:
    return {"response": response, "fine-grained_score": score, "annotations": {"helpfulness": {"Rating": helpfulness}}}


ULTRAFEEDBACK = [
    {
        "instruction": "Name a fruit",
        "completions": [
            _completion("apple", 4.5, "5"),
            _completion("rock", 1.0, "1"),
            _completion("pear", 4.5, "4"),
            _completion("tree", 3.0, "4"),
        ],
    },
]
NECTAR = [
    {
        "prompt": "\n\nHuman: Count to 3\n\nAssistant:",
        "answers": [
            {"answer": f"answer {k}", "model": "m", "rank": rank} for k, rank in enumerate([3, 1, 7, 2, 5, 4, 6])
        ],
    },
]
ALPACA = [
    {"instruction": "Reverse the word", "input": "abc", "output": "cba"},
    {"instruction": "Say hi", "input": "", "output": "hi"},
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "Be brief"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hey"},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Ciao"},
        ]
    },
]


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory):
    """A tokenizer without a chat template: transcripts stay text."""
    from lit_rlhf.models.loading import load_tokenizer

    return load_tokenizer(str(build_char_tokenizer(tmp_path_factory.mktemp("plain"), chat_template=None)))


def _convert(tmp_path, records, stage, tokenizer, format="auto", fields=None):
    path = write_jsonl(tmp_path / "data.jsonl", records)
    converted, _ = convert_records(read_records(str(path)), format, stage, FieldMap(fields or {}), tokenizer)
    return [r.data for r in converted]


# ----------------------------------------------------------------------------------------------
# Each layout, converted


@pytest.mark.parametrize(
    "records, expected",
    [
        (HH, "hh_rlhf"),
        (CONVERSATIONAL, "conversational"),
        (ULTRAFEEDBACK, "ultrafeedback"),
        (NECTAR, "nectar"),
        (ALPACA, "alpaca"),
        (SHAREGPT, "sharegpt"),
        ([{"prompt": "p", "response": "r"}], "native"),
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}], "native"),
        ([{"prompt": "\n\nHuman: hi\n\nAssistant:"}], "hh_rlhf"),
    ],
)
def test_detection(records, expected, tmp_path):
    assert detect_format(read_records(str(write_jsonl(tmp_path / "d.jsonl", records)))[0], FieldMap()) == expected


def test_detected_format_is_printed(tmp_path, tiny_tokenizer, caplog):
    with caplog.at_level(logging.INFO):
        _convert(tmp_path, ALPACA, "sft", tiny_tokenizer)
    assert "data.jsonl: alpaca records (detected" in caplog.text


def test_hh_rlhf_prompt_is_the_shared_prefix_as_chat_messages(tmp_path, tiny_tokenizer):
    first, second = _convert(tmp_path, HH, "comparisons", tiny_tokenizer)
    assert first == {"prompt": [{"role": "user", "content": "What is 2+2?"}], "responses": ["4", "5"], "ranks": [0, 1]}
    assert second["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a color"},
    ]
    assert second["responses"] == ["Blue", "No"]
    sft = _convert(tmp_path, HH, "sft", tiny_tokenizer)[1]  # SFT trains on the chosen conversation
    assert sft["messages"][-1] == {"role": "assistant", "content": "Blue"} and len(sft["messages"]) == 4


def test_hh_rlhf_without_chat_template_keeps_the_transcript_text(tmp_path, plain_tokenizer):
    first = _convert(tmp_path, HH, "comparisons", plain_tokenizer)[0]
    assert first["prompt"] == "\n\nHuman: What is 2+2?\n\nAssistant:" and first["responses"] == [" 4", " 5"]


def test_conversational_with_implicit_and_explicit_prompt(tmp_path, tiny_tokenizer):
    implicit, explicit, binarized, text_prompt = _convert(tmp_path, CONVERSATIONAL, "comparisons", tiny_tokenizer)
    assert implicit == {
        "prompt": [{"role": "user", "content": "Sky color?"}],
        "responses": ["Blue", "Green"],
        "ranks": [0, 1],
    }
    assert explicit == {
        "prompt": [{"role": "user", "content": "Grass color?"}],
        "responses": ["Green", "Red"],
        "ranks": [0, 1],
    }
    assert binarized == {
        "prompt": [{"role": "user", "content": "Sea color?"}],
        "responses": ["Blue", "Pink"],
        "ranks": [0, 1],
    }
    assert text_prompt == {
        "prompt": [{"role": "user", "content": "Snow color?"}],
        "responses": ["White", "Red"],
        "ranks": [0, 1],
    }


def test_ultrafeedback_ranks_from_a_chosen_score_field_with_ties(tmp_path, tiny_tokenizer):
    (default,) = _convert(tmp_path, ULTRAFEEDBACK, "comparisons", tiny_tokenizer)
    assert default["ranks"] == [0, 2, 0, 1]  # 4.5 and 4.5 tie: no pair between them
    (nested,) = _convert(
        tmp_path, ULTRAFEEDBACK, "comparisons", tiny_tokenizer, fields={"score": "annotations.helpfulness.Rating"}
    )
    assert nested["ranks"] == [0, 2, 1, 1]
    assert nested["prompt"] == [{"role": "user", "content": "Name a fruit"}]
    assert _convert(tmp_path, ULTRAFEEDBACK, "sft", tiny_tokenizer)[0]["messages"][-1]["content"] == "apple"


def test_nectar_k7_ranks_and_transcript_prompt(tmp_path, tiny_tokenizer):
    (record,) = _convert(tmp_path, NECTAR, "comparisons", tiny_tokenizer)
    assert record["prompt"] == [{"role": "user", "content": "Count to 3"}]
    assert len(record["responses"]) == 7 and record["ranks"] == [3, 1, 7, 2, 5, 4, 6]
    assert (
        _convert(tmp_path, NECTAR, "sft", tiny_tokenizer)[0]["messages"][-1]["content"] == "answer 1"
    )  # rank 1 is best


def test_alpaca_and_sharegpt_for_sft_and_prompts(tmp_path, tiny_tokenizer, plain_tokenizer):
    with_input, without = _convert(tmp_path, ALPACA, "sft", tiny_tokenizer)
    assert with_input["messages"] == [
        {"role": "user", "content": "Reverse the word\n\nabc"},
        {"role": "assistant", "content": "cba"},
    ]
    assert without["messages"][0]["content"] == "Say hi"
    text = _convert(tmp_path, ALPACA, "sft", plain_tokenizer)[0]
    assert text == {
        "prompt": "### Instruction:\nReverse the word\n\n### Input:\nabc\n\n### Response:\n",
        "response": "cba",
    }
    (chat,) = _convert(tmp_path, SHAREGPT, "sft", tiny_tokenizer)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    (prompt,) = _convert(tmp_path, SHAREGPT, "prompts", tiny_tokenizer)
    assert prompt["prompt"][-1] == {"role": "user", "content": "Bye"}  # the conversation up to its last human turn


# ----------------------------------------------------------------------------------------------
# Through the data modules


def test_reward_data_module_reads_hh_rlhf_and_nectar(tmp_path, tiny_dir):
    tokenizer = str(tiny_dir / "tokenizer")
    hh = RewardDataModule(train=str(write_jsonl(tmp_path / "hh.jsonl", HH)), tokenizer=tokenizer, group_by_length=False)
    hh.setup("fit")
    first = hh.train_groups[0]
    text = hh.tokenizer.decode(first.sequences[0])
    assert text == "<|user|>What is 2+2?\n<|assistant|>4<eos>"  # the chat template renders the prompt
    nectar = RewardDataModule(
        train=str(write_jsonl(tmp_path / "n.jsonl", NECTAR)), tokenizer=tokenizer, format="nectar"
    )
    nectar.setup("fit")
    (group,) = nectar.train_groups
    assert len(group.sequences) == 7 and group.ranks == [3, 1, 7, 2, 5, 4, 6]


def test_sft_data_module_reads_alpaca_and_sharegpt(tmp_path, tiny_dir):
    tokenizer = str(tiny_dir / "tokenizer")
    data = SFTDataModule(train=str(write_jsonl(tmp_path / "sg.jsonl", SHAREGPT)), tokenizer=tokenizer)
    data.setup("fit")
    (example,) = data.train_rows
    trained = data.tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert trained == "Hey\nCiao\n"  # both assistant turns, nothing else
    alpaca = SFTDataModule(train=str(write_jsonl(tmp_path / "a.jsonl", ALPACA)), tokenizer=tokenizer, format="alpaca")
    alpaca.setup("fit")
    assert len(alpaca.train_rows) == 2


def test_prompt_data_module_reads_nectar_prompts(tmp_path, tiny_dir):
    repeated = dict(NECTAR[0], answers=[{"answer": "same", "rank": 1}, {"answer": "same", "rank": 2}])
    data = PromptDataModule(
        prompts=str(write_jsonl(tmp_path / "n.jsonl", NECTAR + [repeated])), tokenizer=str(tiny_dir / "tokenizer")
    )
    data.setup("fit")  # prompts only: the answers are not read (a repeated answer would stop the RM stage)
    assert len(data.train_prompts) == 2
    ids = data.train_prompts[0]
    ids = ids[0] if isinstance(ids, tuple) else ids
    assert data.tokenizer.decode(ids) == "<|user|>Count to 3\n<|assistant|>"


# ----------------------------------------------------------------------------------------------
# Malformed files name the file, the record and the field


def _hh(chosen: str, rejected: str) -> dict:
    return {"chosen": chosen, "rejected": rejected}


MALFORMED = [
    (
        "hh_rlhf",
        "comparisons",
        _hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: OTHER\n\nAssistant: c"),
        "rejected",
        "does not share the conversation",
    ),
    (
        "hh_rlhf",
        "comparisons",
        _hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b"),
        "rejected",
        "same last Assistant",
    ),
    ("hh_rlhf", "comparisons", _hh("just text", "\n\nHuman: a\n\nAssistant: c"), "chosen", "expected a transcript"),
    (
        "conversational",
        "comparisons",
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "robot", "content": "b"}],
        },
        "rejected",
        "one .'role': 'assistant'",
    ),
    (
        "conversational",
        "comparisons",
        {
            "prompt": [{"role": "user", "content": ""}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        r"prompt\[0\].content",
        "non-empty",
    ),
    (
        "ultrafeedback",
        "comparisons",
        {"instruction": "q", "completions": [_completion("a", 2, "5"), _completion("b", "N/A", "3")]},
        r"completions\[1\].fine-grained_score",
        "expected a number",
    ),
    (
        "ultrafeedback",
        "comparisons",
        {"instruction": "q", "completions": [_completion("a", 2, "5"), {"score": 1}]},
        r"completions\[1\].response",
        "expected a string",
    ),
    (
        "nectar",
        "comparisons",
        {"prompt": "\n\nHuman: q\n\nAssistant:", "answers": [{"answer": "a", "rank": 1}, {"answer": "b"}]},
        r"answers\[1\].rank",
        "missing",
    ),
    (
        "nectar",
        "comparisons",
        {"prompt": "\n\nHuman: q\n\nAssistant: already answered", "answers": [{"answer": "a", "rank": 1}]},
        "prompt",
        "empty '.*Assistant:' turn",
    ),
    ("alpaca", "sft", {"instruction": "q", "input": "", "output": ""}, "output", "is empty"),
    ("alpaca", "sft", {"instruction": 3, "output": "x"}, "instruction", "expected a string"),
    (
        "sharegpt",
        "sft",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "wizard", "value": "a"}]},
        r"conversations\[1\].from",
        "expected one of",
    ),
    (
        "sharegpt",
        "sft",
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        r"conversations\[0\].from",
        "out of order",
    ),
    ("sharegpt", "sft", {"conversations": [{"from": "human", "value": "q"}]}, "conversations", "no demonstration"),
]


@pytest.mark.parametrize(
    "fmt, stage, bad, field, problem", MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)]
)
def test_malformed_records_name_file_record_and_field(fmt, stage, bad, field, problem, tmp_path, tiny_tokenizer):
    good = {
        "hh_rlhf": HH[0],
        "conversational": CONVERSATIONAL[0],
        "ultrafeedback": ULTRAFEEDBACK[0],
        "nectar": NECTAR[0],
        "alpaca": ALPACA[0],
        "sharegpt": SHAREGPT[0],
    }[fmt]
    with pytest.raises(RecordError, match=rf"data.jsonl: record 2: field '{field}': .*{problem}"):
        _convert(tmp_path, [good, bad], stage, tiny_tokenizer, format=fmt)


def test_layouts_that_cannot_feed_a_stage_are_refused(tmp_path, tiny_tokenizer, plain_tokenizer):
    with pytest.raises(RecordError, match="alpaca records are demonstrations, not comparisons"):
        _convert(tmp_path, ALPACA, "comparisons", tiny_tokenizer)
    with pytest.raises(RecordError, match="sharegpt records are chats, and the tokenizer has no chat template"):
        _convert(tmp_path, SHAREGPT, "sft", plain_tokenizer)


def test_reward_data_module_drops_bad_public_records_when_asked(tmp_path, tiny_dir):
    bad = _hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b")
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [HH[0], bad, HH[1]]))
    data = RewardDataModule(train=str(path), tokenizer=str(tiny_dir / "tokenizer"), on_invalid="drop")
    data.setup("fit")
    assert len(data.train_groups) == 2 and data.drop_counts == {"train/dropped_repeated_response": 1}


def test_sft_and_prompt_data_modules_drop_bad_transcripts_when_asked(tmp_path, tiny_dir):
    """Real HH-RLHF has transcripts whose turns do not alternate: SFT and PPO prompts stop on them by default, and
    with ``on_invalid: drop`` skip them, counted by reason."""
    bad = _hh("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "\n\nHuman: a\n\nAssistant: b\n\nAssistant: d")
    path = write_jsonl(tmp_path / "hh.jsonl", [HH[0], bad, HH[1]])
    tokenizer = str(tiny_dir / "tokenizer")
    with pytest.raises(RecordError, match="hh.jsonl: record 2: field 'chosen'"):
        SFTDataModule(train=str(path), tokenizer=tokenizer).setup("fit")
    sft = SFTDataModule(train=str(path), tokenizer=tokenizer, on_invalid="drop")
    sft.setup("fit")
    assert len(sft.train_rows) == 2
    with pytest.raises(RecordError, match="hh.jsonl: record 2: field 'chosen'"):
        PromptDataModule(prompts=str(path), tokenizer=tokenizer).setup("fit")
    prompts = PromptDataModule(prompts=str(path), tokenizer=tokenizer, on_invalid="drop")
    prompts.setup("fit")
    assert len(prompts.train_prompts) == 2
