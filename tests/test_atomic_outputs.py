"""Outputs appear whole or not at all: files (``lit-rlhf sample``, ``sandbox label``) and exported model
directories are written beside their target and moved into place only when complete."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from lit_rlhf.atomic import COMMIT_MARKER, atomic_directory, atomic_file, incomplete_files


class Crash(Exception):
    pass


def test_a_file_write_that_dies_leaves_the_previous_file(tmp_path):
    target = tmp_path / "samples.jsonl"
    target.write_text("old\n")
    with pytest.raises(Crash):
        with atomic_file(target) as f:
            f.write("half of the new")
            raise Crash()
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left


def test_a_directory_export_that_dies_leaves_the_previous_one_and_a_finished_one_is_marked(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target, command="lit-rlhf fit --config configs/sft.yaml") as out:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x" * 10)
    marker = json.loads((target / COMMIT_MARKER).read_text())
    assert marker == {
        "files": {"config.json": 2, "model.safetensors": 10},
        "command": "lit-rlhf fit --config configs/sft.yaml",
    }
    assert incomplete_files(target) == []

    with pytest.raises(Crash):
        with atomic_directory(target) as out:
            (out / "config.json").write_text('{"new": 1}')
            raise Crash()
    assert (target / "config.json").read_text() == "{}"  # the previous export, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    (target / "model.safetensors").write_bytes(b"x" * 4)  # cut short after the export (a copy, a full disk)
    assert incomplete_files(target) == ["model.safetensors"]


def test_label_outputs_are_replaced_whole(tmp_path, monkeypatch):
    from conftest import REPO_ROOT

    from lit_rlhf.sandbox import labeling

    prompts = (REPO_ROOT / "lit_rlhf/sandbox/assets/data/prompts_train.jsonl").read_text().splitlines()[:4]
    samples = write_jsonl(
        tmp_path / "s.jsonl", [dict(json.loads(p), responses=["a b c", "c b a", "x"]) for p in prompts]
    )
    out = tmp_path / "c"
    out.mkdir()
    (out / "train.jsonl").write_text("previous\n")

    # Every prompt yields a comparison, and writing the second output dies half-way.
    monkeypatch.setattr(
        labeling.GoldLabeler,
        "to_comparison",
        lambda self, record, responses: {"prompt": record["prompt"], "responses": responses},
    )
    calls = []

    def dying_dumps(*args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return "{}"
        raise Crash()

    monkeypatch.setattr(labeling.json, "dumps", dying_dumps)
    with pytest.raises(Crash):
        labeling.label_samples(str(samples), str(out))
    assert (out / "train.jsonl").read_text() == "previous\n"
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl", "val.jsonl"]  # val.jsonl was complete


def test_rm_truncations_are_counted_like_sft_and_ppo(tiny_tokenizer):
    from lit_rlhf.data.common import DropCounter
    from lit_rlhf.data.comparisons import encode_comparisons
    from lit_rlhf.data.records import FieldMap, Record

    records = [
        Record({"prompt": "p" * 30, "responses": ["a", "b"]}, "x.jsonl", 1),
        Record({"prompt": "q", "responses": ["a", "b"]}, "x.jsonl", 2),
    ]
    counter = DropCounter("RM")
    groups = encode_comparisons(
        records, tiny_tokenizer, FieldMap(), max_length=10, truncation="left", on_invalid="error", counter=counter
    )
    assert len(groups) == 2
    assert counter.reasons == {"sequences truncated on the left (kept)": 2}
    assert counter.report("train", 2) == {"train/dropped_sequences_truncated_on_the_left_(kept)": 2}
