"""PPO on 2 CPU processes (gloo): DDP and FSDP2 (FSDP2Strategy), with and without LoRA, and uneven lengths.

One torchrun job runs every scenario for 2 rollouts. A rank that finishes generating early must keep
joining the other rank's collectives (synced_gpus): the job's timeout fails the test if it hangs.
"""

from __future__ import annotations

import json
import math

import dist_support
import pytest
import torch
from ppo_support import build_world
from safetensors.torch import load_file
from test_distributed import torchrun

SCENARIOS = [
    {"name": "ppo-ddp", "stage": "ppo", "strategy": "ddp", "steps": 4},
    {"name": "ppo-fsdp2", "stage": "ppo", "strategy": "fsdp2", "steps": 4},
    {"name": "ppo-fsdp2-lora", "stage": "ppo", "strategy": "fsdp2", "steps": 4, "lora": True},
    {"name": "ppo-fsdp2-uneven", "stage": "ppo", "strategy": "fsdp2", "steps": 2, "uneven": True},
]
#: One fixed global rollout (responses of different lengths) on 2 ranks vs 1 process: the same first gradient.
EXACT = [
    {"name": f"ppo-exact-{strategy}", "stage": "ppo-exact", "strategy": strategy, "steps": 1}
    for strategy in ("ddp", "fsdp2")
]
TIMEOUT_S = 150
#: Asynchronous rollouts (batch.max_staleness 1, each rank with its own HF worker engine): 5 rollouts of 3 per epoch.
ASYNC = [
    {"name": f"ppo-{strategy}-async", "stage": "ppo", "strategy": strategy, "steps": 5, "async": True}
    for strategy in ("ddp", "fsdp2")
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("dist_ppo")
    (root / "ppo").mkdir()
    build_world(root / "ppo", tiny_dir)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"inputs": str(root), "out": str(root / "two"), "scenarios": SCENARIOS + EXACT}))
    result = torchrun(spec, TIMEOUT_S)  # raises subprocess.TimeoutExpired on a hang
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    dist_support.run_scenario(
        root, root / "one", {"name": "ppo-exact", "stage": "ppo-exact", "strategy": "single", "steps": 1}, devices=1
    )
    return root


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_ppo_runs_on_two_ranks_and_exports_full_weights(runs, scenario):
    out = runs / "two" / scenario["name"]
    losses = [json.loads((out / f"losses_rank{r}.json").read_text()) for r in range(2)]
    assert all(len(rank) >= 1 for rank in losses)
    exported = load_file(out / "model/model.safetensors")
    initial = load_file(runs / "ppo/sft/model.safetensors")
    assert exported.keys() == initial.keys()  # full, unsharded, merged weights under the plain HF names
    for name, tensor in exported.items():
        assert tensor.shape == initial[name].shape, name
        assert math.isfinite(tensor.float().abs().sum().item())
    assert any(not torch.equal(exported[n], initial[n]) for n in initial), "PPO did not move the policy"


@pytest.mark.parametrize("scenario", EXACT, ids=[s["name"] for s in EXACT])
def test_two_ranks_give_the_one_process_gradient_on_the_same_rollout(runs, scenario):
    """Policy, value and ptx terms normalised by the global token counts: rank and micro-batch split do not matter."""
    one = torch.load(runs / "one" / "ppo-exact" / "grads.pt")
    two = torch.load(runs / "two" / scenario["name"] / "grads.pt")
    assert one.keys() == two.keys() and any(k.startswith("value_model.") for k in one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def async_runs(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("dist_ppo_async")
    (root / "ppo").mkdir()
    build_world(root / "ppo", tiny_dir)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"inputs": str(root), "out": str(root / "two"), "scenarios": ASYNC}))
    result = torchrun(spec, TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ASYNC, ids=[s["name"] for s in ASYNC])
def test_asynchronous_rollouts_on_two_ranks_are_at_most_one_version_old(async_runs, scenario):
    out = async_runs / "two" / scenario["name"]
    for rank in range(2):
        rows = json.loads((out / f"staleness_rank{rank}.json").read_text())
        staleness = [updated - max(versions) for updated, versions in rows]
        assert all(min(versions) == max(versions) for _, versions in rows)
        assert staleness == [0, 1, 1, 0, 1], f"rank {rank}"  # the first rollout of each epoch is sampled in step
    exported = load_file(out / "model/model.safetensors")
    initial = load_file(async_runs / "ppo/sft/model.safetensors")
    assert any(not torch.equal(exported[n], initial[n]) for n in initial), "PPO did not move the policy"
