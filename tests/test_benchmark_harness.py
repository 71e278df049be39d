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
