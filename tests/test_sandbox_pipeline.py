"""The README's main job, on its smallest settings: every stage runs and the report is complete."""

from __future__ import annotations

import json

import pytest

from lit_rlhf.cli import main


def test_sandbox_pipeline_fast_run_writes_every_stage_and_the_report(in_scratch_dir):
    main(["sandbox", "run", "--out", "runs", "--fast", "true", "--wandb", "false"])
    runs = in_scratch_dir / "runs"
    for stage in ("sft", "rm", "ppo", "ppo_ptx", "dpo"):
        assert (runs / stage / "model" / "model.safetensors").exists(), stage
    assert (runs / "comparisons/train.jsonl").read_text().strip()
    report = json.loads((runs / "report.json").read_text())
    assert set(report["policies"]) == {"base", "SFT", "PPO (no ptx)", "PPO-ptx", "DPO"}
    for metrics in report["policies"].values():
        assert 0.0 <= metrics["gold/score"] <= 1.0
        assert metrics["heldout/lm_loss"] > 0
    assert 0.0 <= report["rm"]["val/accuracy"] <= 1.0
    assert all(kl is not None for kl in report["final_kl"].values())
    assert set(report["final_kl"]) == {"PPO (no ptx)", "PPO-ptx", "DPO"}  # DPO's KL to SFT measured by the probe
    assert "| PPO-ptx |" in (runs / "report.md").read_text() and "| DPO |" in (runs / "report.md").read_text()
    # The report's numbers are the runs' own: each final KL is the last probe measurement in that run's metrics,
    # and the table shows the json's gold scores.
    from lit_rlhf.sandbox.report import last_value, probe_points, read_csv_metrics

    for label, stage in {"PPO (no ptx)": "ppo", "PPO-ptx": "ppo_ptx", "DPO": "dpo"}.items():
        rows = read_csv_metrics(runs / stage / "csv/metrics.csv")
        points = probe_points(rows)
        assert len(points) >= 2, label  # the probe measured the SFT policy at the start and the trained one at the end
        assert report["final_kl"][label] == last_value(rows, "probe/kl") == points[-1][0], label
    for label, metrics in report["policies"].items():
        assert f"| {label} | {metrics['gold/score']:.3f} |" in (runs / "report.md").read_text(), label
    # The figure those points are drawn in: 10 x 4 inches at 100 dpi, gold left and proxy right, one colour per run in
    # the report's order (PPO blue, PPO-ptx orange, DPO green). Measured: DPO's gold line spans the left panel
    # (~1080 green pixels; PPO's short lines hide under it); DPO has no proxy, so the right panel holds PPO's and
    # PPO-ptx's (~1000 each). A legend entry alone is ~100 pixels.
    from figure_support import assert_plot

    assert_plot(runs / "gold_vs_kl.png", (1000, 400), [{"tab:green": 300}, {"tab:blue": 300, "tab:orange": 300}])
    # Each fit ran in its own process: its wall time and its own peak memory (a model, an optimizer: well over 10 MB).
    costs = report["costs"]
    assert set(costs) == {
        "SFT",
        "sample K + gold labels",
        "RM",
        "PPO-ptx",
        "PPO (no ptx)",
        "DPO",
        "evaluation (this report)",
    }
    for stage in ("SFT", "RM", "PPO-ptx", "PPO (no ptx)", "DPO"):
        assert costs[stage]["wall_s"] > 0 and 0.01 < costs[stage]["peak_rss_gib"] < 20, (stage, costs[stage])
    assert "| SFT |" in (runs / "report.md").read_text().split("peak memory")[1]
    # The gold table comes from evaluate's path: its samples are in report_samples.jsonl, SFT against itself wins
    # half, and each policy's gold score and KL are the means of its rows there.
    rows = [json.loads(line) for line in (runs / "report_samples.jsonl").read_text().splitlines()]
    assert report["policies"]["SFT"]["gold/win_rate"] == 0.5 and report["policies"]["SFT"]["kl"] == 0.0
    for label, metrics in report["policies"].items():
        own = [r for r in rows if r["policy"] == label]
        assert metrics["gold/score"] == pytest.approx(sum(r["scores"]["gold"] for r in own) / len(own)), label
        assert metrics["kl"] == pytest.approx(sum(r["kl"] for r in own) / len(own)), label
        assert metrics["gold/win_rate_low"] <= metrics["gold/win_rate"] <= metrics["gold/win_rate_high"], label


def test_sandbox_pipeline_stage_options_are_checked_before_any_work(in_scratch_dir, capsys):
    for bad, expected in (
        (["--stages", "[ppo, rlhf]"], "--stages"),
        (["--samples_per_prompt", "1"], "samples_per_prompt"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["sandbox", "run", "--out", "runs", "--fast", "true", "--wandb", "false", *bad])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
    assert not (in_scratch_dir / "runs").exists()


def test_a_failing_stage_stops_the_pipeline_with_one_line_naming_it(in_scratch_dir, capsys):
    """The SFT stage's own error is printed by its process; the pipeline then stops with one line naming the stage."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "sandbox",
                "run",
                "--out",
                "runs",
                "--fast",
                "true",
                "--wandb",
                "false",
                "--base_model",
                "no/such/model.gguf",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lit-rlhf: error: stage 'sft' failed (exit code 2)" in err
    assert not (in_scratch_dir / "runs/comparisons").exists()  # nothing after the failed stage ran
