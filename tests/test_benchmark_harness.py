"""The parts of benchmarks/compare.py that decide what a number means: warm-up exclusion, counters,
the ratio summary, and the message when TRL is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from compare_common import StepClock  # noqa: E402


def test_step_clock_measures_from_the_end_of_the_warm_up():
    clock = StepClock(warmup_steps=2)
    clock.ends, clock.work = (
        [10.0, 11.0, 13.0, 16.0],
        [{"tokens": 100}, {"tokens": 200}, {"tokens": 30}, {"tokens": 40}],
    )
    assert clock.measured() == {"measured_steps": 2, "seconds": 5.0, "tokens": 70.0}
    with pytest.raises(RuntimeError, match="fewer than warm-up"):
        StepClock(warmup_steps=4).measured()
    with pytest.raises(ValueError):
        StepClock(warmup_steps=0)


def test_report_gives_per_pair_ratios_min_median_max():
    import compare

    def pair(lit: int, trl: int) -> tuple[dict, dict]:
        return (
            {"tokens": lit, "seconds": 1.0, "peak_rss_gib": 1.0},
            {"tokens": trl, "seconds": 2.0, "peak_rss_gib": 2.0},
        )

    row = compare.report("sft", [pair(300, 200), pair(200, 200), pair(400, 200)])[0]
    assert "| 2.00 / 3.00 / 4.00 |" in row  # (300/1)/(200/2) = 3, 2, 4


@pytest.mark.skipif(importlib.util.find_spec("trl") is not None, reason="needs an interpreter without TRL")
def test_missing_trl_names_the_venv_to_create():
    import compare

    with pytest.raises(SystemExit) as stop:
        compare.check_trl(sys.executable, "trl.experimental.ppo", compare.INSTALL["trl-ppo"])
    assert "trl==1.12.0" in str(stop.value) and "--system-site-packages" in str(stop.value)


def test_keyword_reward_is_the_share_of_keywords_for_both_frameworks():
    from compare_trl_grpo import RewardMeter
    from compare_workspace import keyword_reward, keyword_share

    assert keyword_share("w7 w8 w14 w15") == 0.5  # 7 and 14 are multiples of KEYWORD_EVERY = 7
    assert keyword_share("w21 <unk> x7") == 1 / 3  # only w<id> words can be keywords
    assert keyword_share("") == 0.0
    assert keyword_reward(prompt="w7", response="w3 w70", record={}) == 0.5  # lit-rlhf's FunctionReward signature
    meter = RewardMeter()  # TRL's reward function: the same values, and it counts what it scored
    assert meter(prompts=["p", "p"], completions=["w7 w8", "w3"], completion_ids=[[7, 8, 1], [3]]) == [0.5, 0.0]
    assert meter.take() == {"episodes": 2, "generated_tokens": 4}
    with pytest.raises(RuntimeError, match="no completion was scored"):
        meter.take()


def test_workspace_writes_the_dpo_pairs_and_grpo_prompts_both_frameworks_read(tmp_path):
    import json

    from compare_workspace import SETTINGS, build_data

    build_data(tmp_path / "a", vocab_size=64)
    build_data(tmp_path / "b", vocab_size=64)
    for name in ("dpo_pairs.jsonl", "prompts.jsonl", "sft.jsonl"):  # deterministic: every run trains the same records
        assert (tmp_path / "a/data" / name).read_text() == (tmp_path / "b/data" / name).read_text()
    pairs = [json.loads(line) for line in (tmp_path / "a/data/dpo_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == SETTINGS["dpo"]["pairs"] and {tuple(p) for p in pairs} == {("prompt", "chosen", "rejected")}
    longest = max(len(p["prompt"].split()) + max(len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs)
    assert longest + 1 <= SETTINGS["dpo"]["max_length"]  # + eos: neither framework truncates or drops a pair
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "a/data/prompts.jsonl").read_text().splitlines()]
    assert max(len(p.split()) for p in prompts) <= SETTINGS["grpo"]["max_prompt_length"]  # TRL's GRPO cannot truncate


def test_parse_result_takes_the_last_result_line():
    import compare

    stdout = 'noise\nRESULT {"seconds": 1}\nmore\nRESULT {"seconds": 2, "episodes": 4}\n'
    assert compare.parse_result(stdout) == {"seconds": 2, "episodes": 4}
    with pytest.raises(KeyError):
        compare.parse_result("no result here\n")


def test_each_stage_pairs_the_right_workers():
    import compare

    pythons = dict(lit="lit", trl="trl", trl_ppo="trl-ppo", vllm="vllm")
    first, second = compare.workers("async", **pythons)
    assert (first.python, first.extra, second.python, second.extra) == (
        "vllm",
        ("--max_staleness", "1"),
        "vllm",
        ("--max_staleness", "0"),
    )
    first, second = compare.workers("ppo-vllm", **pythons)
    assert (first.python, first.script, second.python, second.script) == (
        "vllm",
        "compare_lit_rl.py",
        "trl-ppo",
        "compare_trl_ppo.py",
    )
    assert [w.script for w in compare.workers("grpo", **pythons)] == ["compare_lit_rl.py", "compare_trl_grpo.py"]
    assert [(w.python, w.script) for w in compare.workers("dpo", **pythons)] == [
        ("lit", "compare_lit_rl.py"),
        ("trl", "compare_trl.py"),
    ]
    assert [w.script for w in compare.workers("sft", **pythons)] == ["compare_lit.py", "compare_trl.py"]
    assert set(compare.RATES) == {stage for stages in compare.STAGES.values() for stage in stages}


def test_tables_put_async_against_sync_in_its_own_table(capsys):
    import compare

    def run(episodes: float, seconds: float) -> dict:
        return {"episodes": episodes, "generated_tokens": 64 * episodes, "seconds": seconds, "peak_rss_gib": 1.0}

    compare.print_tables(
        {
            "dpo": [
                ({"pairs": 30, "seconds": 1.0, "peak_rss_gib": 1.0}, {"pairs": 20, "seconds": 1.0, "peak_rss_gib": 2.0})
            ],
            "async": [(run(16, 2.0), run(16, 3.0)), (run(16, 2.0), run(16, 2.0))],
        }
    )
    out = capsys.readouterr().out
    assert "| dpo | pairs/s | 30.0 | 20.0 | 1.50 / 1.50 / 1.50 |" in out
    assert "async (max_staleness 1) against sync (max_staleness 0) (async: lit-rlhf sync)" in out
    assert "| async | episodes/s | 8.0 | 6.7 | 1.00 / 1.25 / 1.50 |" in out  # per pair 1.5 and 1.0


def test_phase_timer_sums_each_wrapped_method_per_rollout(monkeypatch):
    import compare_common

    class Engine:
        def generate(self, x):
            return x + 1

    engine = Engine()
    timer = compare_common.PhaseTimer(generate=(engine, "generate"))
    clock = iter([10.0, 10.5, 20.0, 20.25])
    monkeypatch.setattr(compare_common.time, "perf_counter", lambda: next(clock))
    assert engine.generate(1) == 2 and engine.generate(2) == 3  # behaviour unchanged
    monkeypatch.undo()
    assert timer.take() == {"generate_seconds": 0.75}
    assert timer.take() == {"generate_seconds": 0.0}  # taken: the next rollout starts from zero
