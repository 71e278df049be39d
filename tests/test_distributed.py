"""SFT and RM under DDP, FSDP1 (HFFSDPStrategy) and FSDP2 on 2 CPU processes (gloo), against 1 process.

One torchrun job (2 ranks) runs every scenario a few steps; the same scenarios run in this process
with the same global batches (records of different lengths). Losses (summed over ranks) and the exported
HF weights must match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dist_support
import pytest
import torch
from conftest import REPO_ROOT, build_char_tokenizer, write_jsonl, write_tiny_config
from safetensors.torch import load_file

from lit_rlhf.cli import main

STEPS = 3
SCENARIOS = [
    {"name": f"{stage}-{strategy}", "stage": stage, "strategy": strategy, "steps": STEPS}
    for stage in ("sft", "rm")
    for strategy in ("ddp", "fsdp", "fsdp2")
] + [
    {"name": f"{stage}-{strategy}-lora", "stage": stage, "strategy": strategy, "steps": STEPS, "lora": True}
    for stage, strategy in (("sft", "ddp"), ("sft", "fsdp2"), ("rm", "fsdp"))
]
TIMEOUT_S = 180


def write_inputs(root) -> None:
    """A tokenizer, a saved random model every run starts from, and SFT and RM records of different lengths."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_char_tokenizer(root / "tokenizer")
    vocab = len(AutoTokenizer.from_pretrained(root / "tokenizer"))
    config = write_tiny_config(root / "config.json", vocab)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(json_config(config)).save_pretrained(root / "init_lm")
    letters = "abcdefghijklmnop"
    # Different lengths, so the ranks hold different token counts: only a loss normalised by the whole step's
    # count (all ranks) matches one process; a mean of per-rank means would not.
    write_jsonl(
        root / "sft.jsonl",
        [{"prompt": f"q{i:02d}:", "response": letters[i : i + 1 + (5 * i) % 11]} for i in range(10)] * 2,
    )
    write_jsonl(
        root / "rm.jsonl",
        [
            {
                "prompt": f"p{i:02d}:",
                "responses": [letters[i : i + 1 + i % 5], letters[i + 1 : i + 9][::-1], "zzz" + str(i % 10)],
            }
            for i in range(12)
        ],
    )


def json_config(path):
    from transformers import AutoConfig

    fields = json.loads(path.read_text())
    return AutoConfig.for_model(**fields)


def torchrun(spec_path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO_ROOT / "tests/dist_support.py"),
        str(spec_path),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs every scenario on 2 ranks (one torchrun job) and on 1 process; returns the root directory."""
    root = tmp_path_factory.mktemp("dist")
    write_inputs(root)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"inputs": str(root), "out": str(root / "two"), "scenarios": SCENARIOS}))
    result = torchrun(spec, TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for stage in ("sft", "rm"):
        for lora in (False, True):
            name = stage + ("-lora" if lora else "")
            dist_support.run_scenario(
                root,
                root / "one",
                {"name": name, "stage": stage, "strategy": "single", "steps": STEPS, "lora": lora},
                devices=1,
            )
    return root


def rank_sum_losses(directory) -> list[float]:
    """Each step's loss sum over ranks: stages return the step's summed loss, normalised before the optimizer step."""
    per_rank = [json.loads((directory / f"losses_rank{r}.json").read_text()) for r in range(2)]
    return [sum(step) for step in zip(*per_rank)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_two_ranks_match_one_process(runs, scenario):
    one = runs / "one" / (scenario["stage"] + ("-lora" if scenario.get("lora") else ""))
    two = runs / "two" / scenario["name"]
    expected = json.loads((one / "losses_rank0.json").read_text())
    assert len(expected) == STEPS
    torch.testing.assert_close(torch.tensor(rank_sum_losses(two)), torch.tensor(expected), atol=2e-4, rtol=1e-4)

    # The HF export: same tensors, same names, same config (the RM's centering bias included).
    exported, reference = load_file(two / "model/model.safetensors"), load_file(one / "model/model.safetensors")
    assert exported.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(exported[name], reference[name], atol=2e-4, rtol=1e-3, msg=name)
    initial = load_file(runs / "init_lm/model.safetensors")
    moved = [n for n in initial if n in exported and not torch.allclose(initial[n], exported[n])]
    assert moved, "training did not change the exported weights"
    config, reference_config = (json.loads((d / "model/config.json").read_text()) for d in (two, one))
    if scenario["stage"] == "rm":
        assert config["reward_bias"] != 0
        assert config["reward_bias"] == pytest.approx(reference_config["reward_bias"], abs=1e-4)


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp2"])
def test_strategy_config_combines_with_every_stage_config(stage, strategy, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--print_config",
                "--config",
                str(REPO_ROOT / f"configs/{stage}.yaml"),
                "--config",
                str(REPO_ROOT / f"configs/strategy/{strategy}.yaml"),
            ]
        )
    printed = capsys.readouterr().out
    assert "strategy:" in printed
    if strategy == "fsdp":
        assert "lit_rlhf.distributed.strategies.HFFSDPStrategy" in printed and "checkpoint_layers: true" in printed
    if strategy == "fsdp2":
        assert "lit_rlhf.distributed.strategies.FSDP2Strategy" in printed
