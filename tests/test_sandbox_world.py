"""The sandbox world: deterministic data, disjoint splits, gold labeler, tokenizer and base config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lit_rlhf.sandbox import (
    BASE_CONFIG,
    DATA_DIR,
    FAMILIES,
    PROMPT_SEPARATOR,
    SANDBOX_FILES,
    TOKENIZER_DIR,
    GoldLabeler,
    parse_prompt,
    write_sandbox_data,
)
from lit_rlhf.sandbox.assets_build import build_assets
from lit_rlhf.sandbox.world import CHATTER, CHATTY_SHARE, record_key

SMALL = dict(
    n_pretrain=200,
    n_pretrain_heldout=50,
    n_sft_train=100,
    n_sft_val=20,
    n_prompts_train=50,
    n_prompts_eval=20,
)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in SANDBOX_FILES}


@pytest.fixture(scope="module")
def shipped() -> dict[str, list]:
    """The shipped data, parsed."""
    return {
        name: read_jsonl(DATA_DIR / name)
        if name.endswith(".jsonl")
        else (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
        for name in SANDBOX_FILES
    }


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_sandbox_data(tmp_path / name, seed=seed, **SMALL)
    first, again, other = (file_bytes(tmp_path / name) for name in "abc")
    assert first == again
    assert all(first[name] != other[name] for name in SANDBOX_FILES)


def test_shipped_assets_equal_a_fresh_regeneration(tmp_path: Path) -> None:
    fresh = build_assets(tmp_path, seed=0)
    assert file_bytes(fresh / "data") == file_bytes(DATA_DIR)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (fresh / "tokenizer" / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
    config, shipped_config = (json.loads(p.read_text()) for p in (fresh / "base_config.json", BASE_CONFIG))
    config.pop("transformers_version"), shipped_config.pop("transformers_version")
    assert config == shipped_config


def test_shipped_sizes_and_family_balance(shipped: dict[str, list]) -> None:
    sizes = {name: len(rows) for name, rows in shipped.items()}
    assert sizes == {
        "pretrain.txt": 4000,
        "pretrain_heldout.txt": 400,
        "sft_train.jsonl": 2000,
        "sft_val.jsonl": 200,
        "prompts_train.jsonl": 1000,
        "prompts_eval.jsonl": 200,
    }
    assert sum((DATA_DIR / n).stat().st_size for n in SANDBOX_FILES) < 2_000_000
    per_family = [sum(r["family"] == f.name for r in shipped["prompts_eval.jsonl"]) for f in FAMILIES]
    assert per_family == [200 // len(FAMILIES)] * len(FAMILIES)


def test_evaluation_and_validation_instances_are_disjoint_from_training(shipped: dict[str, list]) -> None:
    keys = {name: {record_key(r) for r in shipped[name]} for name in SANDBOX_FILES if name.endswith(".jsonl")}
    training = keys["sft_train.jsonl"] | keys["prompts_train.jsonl"]
    assert not keys["prompts_eval.jsonl"] & (training | keys["sft_val.jsonl"])
    assert not keys["sft_val.jsonl"] & training
    # Within a split every instance is distinct.
    assert len(keys["prompts_eval.jsonl"]) == len(shipped["prompts_eval.jsonl"])
    assert not set(shipped["pretrain_heldout.txt"]) & set(shipped["pretrain.txt"])


def test_records_are_well_formed_and_pretraining_has_no_instruction_format(shipped: dict[str, list]) -> None:
    chatty = 0
    for demo in shipped["sft_train.jsonl"]:
        assert demo["prompt"].endswith(PROMPT_SEPARATOR)
        # The correct answer, then either nothing or one of the labelers' chatter phrases.
        assert demo["response"].startswith(" " + demo["answer"])
        assert demo["response"][len(demo["answer"]) + 1 :] in ("",) + CHATTER
        chatty += demo["response"] != " " + demo["answer"]
    assert abs(chatty / len(shipped["sft_train.jsonl"]) - CHATTY_SHARE) < 0.05
    for record in shipped["prompts_eval.jsonl"]:
        assert parse_prompt(record["prompt"]) == record
    assert not any("Answer" in line for line in shipped["pretrain.txt"])


def test_parse_prompt_rejects_foreign_text() -> None:
    with pytest.raises(ValueError, match="matches no sandbox template"):
        parse_prompt("Tell me a joke.\nAnswer:")


CASES = {
    # family: (prompt, exact, partial, wrong)
    "reverse": ("Reverse the letters: k d a m\nAnswer:", " m a d k", " m a k d", " x y z"),
    "sort": ("Sort the letters: d b c a\nAnswer:", " a b c d", " b a c d", " q"),
    "uppercase": ("Write in capitals: k d a\nAnswer:", " K D A", " K D Q", " k d a m"),
    "count": ("Count the letter a in a b a a.\nAnswer:", " 3", " 2", " zero"),
    "arithmetic": ("What is 7 plus 5?\nAnswer:", " 12", " 13", " 40"),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_labeler_orders_exact_partial_wrong(family: str) -> None:
    prompt, exact, partial, wrong = CASES[family]
    record = parse_prompt(prompt)
    assert record["family"] == family
    labeler = GoldLabeler()
    scores = [labeler.score(record, r) for r in (exact, partial, wrong)]
    assert scores[0] == 1.0
    assert 1.0 > scores[1] > scores[2] >= 0.0
    assert labeler.score(record, exact + " junk") < 1.0
    assert labeler.score(record, exact + "<|endoftext|> anything after eos") == 1.0
    assert labeler.score(record, "") == labeler.score(record, "  <|endoftext|>") == 0.0
    # The prompt text alone is enough: same score as with the full record.
    assert labeler.score({"prompt": prompt}, partial) == scores[1]
    assert labeler.rank(record, [wrong, exact, partial]) == [2, 0, 1]


def test_labeler_penalises_more_junk_more_and_unspaced_letters() -> None:
    labeler = GoldLabeler()
    record = parse_prompt("Reverse the letters: k d a m\nAnswer:")
    clean, one_junk, two_junk = (labeler.score(record, r) for r in (" m a d k", " m a d k x", " m a d k x y"))
    assert clean > one_junk > two_junk
    assert labeler.score(record, " madk") == pytest.approx(0.9)
    number = parse_prompt("What is 7 plus 5?\nAnswer:")
    assert labeler.score(number, " 12") > labeler.score(number, " 12.") > labeler.score(number, " 12 plus 3")


def test_rank_ties_and_comparison_record() -> None:
    labeler = GoldLabeler()
    record = parse_prompt("Sort the letters: c a b\nAnswer:")
    responses = [" c a b", " a b c", " a b c", " z"]
    assert labeler.rank(record, responses) == [1, 0, 0, 2]
    comparison = labeler.to_comparison(record, responses)
    assert comparison == {
        "prompt": record["prompt"],
        "responses": [" a b c", " a b c", " c a b", " z"],
        "ranks": [0, 0, 1, 2],
    }
    assert labeler.to_comparison(record, [" q", " q"]) is None
    assert labeler.to_comparison(record, [" a b c"]) is None


def test_labeler_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="family"):
        GoldLabeler().score({"prompt": "x", "family": "poetry", "answer": "y"}, "y")


def test_tokenizer_round_trips_and_keeps_letters_and_digits_apart(tokenizer, shipped: dict[str, list]) -> None:
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for demo in shipped["sft_val.jsonl"]:
        prompt_ids = tokenizer(demo["prompt"])["input_ids"]
        response_ids = tokenizer(demo["response"])["input_ids"]
        # Tokenizing prompt and response apart equals tokenizing them together.
        assert tokenizer(demo["prompt"] + demo["response"])["input_ids"] == prompt_ids + response_ids
        assert tokenizer.decode(prompt_ids + response_ids) == demo["prompt"] + demo["response"]
    letters = tokenizer.convert_ids_to_tokens(tokenizer(" k d a m 17")["input_ids"])
    assert letters == ["\u2581k", "\u2581d", "\u2581a", "\u2581m", "\u2581", "1", "7"]


def test_chat_template_renders_the_prompt_format(tokenizer) -> None:
    user = [{"role": "user", "content": "Sort the letters: b a"}]
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "Sort the letters: b a" + PROMPT_SEPARATOR
    )
    full = user + [{"role": "assistant", "content": "a b"}]
    rendered = tokenizer.apply_chat_template(full, tokenize=False)
    assert rendered == "Sort the letters: b a\nAnswer: a b<|endoftext|>"


def test_base_config_builds_a_model_that_generates(tokenizer) -> None:
    config = AutoConfig.from_pretrained(BASE_CONFIG)
    assert config.vocab_size == len(tokenizer)
    assert (config.eos_token_id, config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    inputs = tokenizer(["Reverse the letters: k d a m\nAnswer:"], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    prompt_length = inputs["input_ids"].shape[1]
    assert prompt_length < output.shape[1] <= prompt_length + 5
    assert torch.equal(output[:, :prompt_length], inputs["input_ids"])
    assert model(**inputs).logits.shape[-1] == len(tokenizer)


def test_labeler_prefers_the_bare_answer_to_the_demonstrations_chatter() -> None:
    # The chatter some demonstrations carry costs gold score: that is what RLHF can fix over SFT.
    labeler = GoldLabeler()
    for record in (
        {"prompt": "p", "family": "reverse", "answer": "m a d k"},
        {"prompt": "p", "family": "arithmetic", "answer": "23"},
    ):
        bare = labeler.score(record, " " + record["answer"])
        assert bare == 1.0
        assert all(labeler.score(record, " " + record["answer"] + chatter) < 0.6 for chatter in CHATTER)
