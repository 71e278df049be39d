"""Model FLOPs per token (Kaplan et al. 2020), the device peak table, and the per-phase ``perf/*`` metrics, on hand
cases; tests/test_ppo.py checks that a PPO fit logs them."""

from __future__ import annotations

import math

import pytest
import torch

from lit_rlhf.algorithms.flops import flops_utilization, forward_flops_per_token, training_flops_per_token
from lit_rlhf.distributed.peak_flops import device_peak_flops, peak_flops_of
from lit_rlhf.modules.throughput import ModelShape, phase_metrics


def test_flops_per_token_are_kaplans_two_n_plus_the_attention_term_and_training_is_three_forwards():
    # 2 * 1000 weights + 2 * 2 layers * 10 positions * 8 wide = 2000 + 320
    assert forward_flops_per_token(1000, n_layers=2, d_model=8, context=10) == 2320
    assert training_flops_per_token(1000, n_layers=2, d_model=8, context=10) == 3 * 2320
    assert forward_flops_per_token(1000, n_layers=2, d_model=8, context=0) == 2000  # no context: 2N
    assert flops_utilization(5e11, seconds=2.0, peak_flops_per_sec=1e12) == 0.25
    with pytest.raises(ValueError, match="non-negative"):
        forward_flops_per_token(-1, 2, 8, 10)
    with pytest.raises(ValueError, match="positive"):
        flops_utilization(1.0, seconds=0.0, peak_flops_per_sec=1e12)


@pytest.mark.parametrize("tied", [False, True])
def test_model_shape_counts_every_matmul_weight_but_the_embedding_lookup(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    shape = ModelShape.of(LlamaForCausalLM(config))
    # per layer: q, k, v, o 4 x 8 x 8 = 256, gate/up/down 3 x 8 x 16 = 384, two norms 16 -> 656; x 2 layers,
    # + final norm 8, + the LM head 10 x 8 = 80 (tied or not: its matmul is done) = 1400
    assert shape == ModelShape(matmul_params=1400, n_layers=2, d_model=8)
    assert shape.flops(tokens=3, context=5) == 3 * (2 * 1400 + 2 * 2 * 5 * 8)
    assert shape.flops(tokens=3, context=5, training=True) == 3 * shape.flops(tokens=3, context=5)
    assert ModelShape.of(torch.nn.Linear(2, 2)) is None  # no transformer config: unknown


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L4", 121),
        ("NVIDIA L40S", 362),
        ("NVIDIA A10", 125),
        ("NVIDIA A10G", None),  # AWS's variant: no published figure
        ("Tesla V100-SXM2-16GB", 125),
        ("Tesla V100-PCIE-32GB", 112),
        ("NVIDIA GeForce RTX 4090", 165),
        ("Tesla T4", 65),
        ("Some Future Accelerator", None),
    ],
)
def test_peak_flops_are_looked_up_by_the_device_name(name, tflops):
    peak = peak_flops_of(name)
    assert peak == (None if tflops is None else tflops * 1e12)


def test_a_cpu_has_no_peak():
    assert device_peak_flops(torch.device("cpu")) is None


def test_phase_metrics_log_mfu_only_where_the_peak_is_known():
    metrics = phase_metrics("update", tokens=100, seconds=2.0, flops=1e6, peak_flops_per_sec=None)
    assert {k: v.item() for k, v in metrics.items()} == {
        "perf/update_tokens_per_sec": 50.0,
        "perf/update_flops_per_sec": 5e5,
    }
    metrics = phase_metrics("update", tokens=100, seconds=2.0, flops=1e6, peak_flops_per_sec=1e6)
    assert metrics["perf/update_mfu"].item() == 0.5
    unknown = phase_metrics("scoring", tokens=100, seconds=2.0, flops=None, peak_flops_per_sec=1e6)
    assert set(unknown) == {"perf/scoring_tokens_per_sec"}  # a model of unknown shape: no FLOPs, no MFU
    assert math.isfinite(phase_metrics("generation", 5, 0.0, 1.0, None)["perf/generation_tokens_per_sec"].item())
