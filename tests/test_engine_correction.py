"""What of the vLLM engine is testable without vLLM (default suite): the engine-vs-trainer mismatch and truncated
importance sampling math, the PPO glue, the weight stream, and clear errors. The engine itself:
tests/test_engine_vllm.py."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from ppo_support import one_cpu_thread, ppo_world, scored_episodes  # noqa: F401  (fixtures)

from lit_rlhf.algorithms.engine_mismatch import logprob_mismatch, truncated_importance_weights
from lit_rlhf.distributed.export import full_tensors_by_layer
from lit_rlhf.engines.correction import RolloutCorrectionSettings, engine_logprob_correction
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import ConfigError

MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_mismatch_figures_over_response_tokens_only():
    engine = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, 0.0, 0.0]])
    trainer = torch.tensor([[-1.5, -2.0, 0.0], [-0.3, -7.0, 0.0]])
    figures = logprob_mismatch(engine, trainer, MASK)
    assert figures["abs_diff"].item() == pytest.approx((0.5 + 0.0 + 0.2) / 3)
    assert figures["max_abs_diff"].item() == pytest.approx(0.5)
    # k3 of log(p_engine / p_trainer), averaged: KL(engine || trainer) on the engine's samples
    k3 = [math.expm1(-d) + d for d in (0.5, 0.0, -0.2)]
    assert figures["kl"].item() == pytest.approx(sum(k3) / 3, rel=1e-5)
    same = logprob_mismatch(trainer, trainer, MASK)
    assert same["abs_diff"].item() == 0 and same["kl"].item() == 0


def test_truncated_importance_weights_are_the_capped_ratio():
    trainer = torch.tensor([math.log(0.5), math.log(0.2), math.log(0.9)])
    engine = torch.tensor([math.log(0.25), math.log(0.4), math.log(1e-30)])  # the last: a token the engine barely drew
    weights = truncated_importance_weights(trainer, engine, cap=2.0)
    assert weights.tolist() == pytest.approx([2.0, 0.5, 2.0])
    assert torch.isfinite(weights).all()
    with pytest.raises(ValueError, match="positive"):
        truncated_importance_weights(trainer, engine, cap=0.0)


def episodes_with(trainer_logprobs: torch.Tensor, engine_logprobs) -> Episodes:
    return scored_episodes(MASK, trainer_logprobs, engine_logprobs)


def test_correction_measures_the_mismatch_and_returns_the_tis_weights():
    trainer = torch.log(torch.tensor([[0.5, 0.2, 1.0], [0.9, 1.0, 1.0]]))
    engine_logprobs = torch.log(torch.tensor([[0.25, 0.4, 1.0], [0.9, 1.0, 1.0]]))
    episodes = episodes_with(trainer, engine_logprobs)

    correction = engine_logprob_correction(episodes, RolloutCorrectionSettings())
    assert correction.weights is None  # TIS off: nothing for the advantage step to apply
    metrics = correction.metrics
    assert metrics["engine/logprob_abs_diff"].item() == pytest.approx((math.log(2) + math.log(2) + 0) / 3, rel=1e-5)
    assert set(metrics) == {"engine/logprob_abs_diff", "engine/logprob_max_abs_diff", "engine/kl"}

    correction = engine_logprob_correction(episodes, RolloutCorrectionSettings(truncated_is_cap=1.5))
    # weights: min(0.5/0.25, 1.5) = 1.5, 0.2/0.4 = 0.5, 1 -> the advantage step multiplies each token's advantage
    assert correction.weights[MASK].tolist() == pytest.approx([1.5, 0.5, 1.0])
    assert correction.metrics["engine/tis_weight"].item() == pytest.approx((1.5 + 0.5 + 1.0) / 3)
    assert correction.metrics["engine/tis_capped"].item() == pytest.approx(1 / 3)
    assert episodes.advantages is None  # the record it read is unchanged

    nothing = engine_logprob_correction(episodes_with(trainer, None), RolloutCorrectionSettings(truncated_is_cap=2.0))
    assert nothing.weights is None and nothing.metrics == {}  # nothing recorded: nothing logged


def test_ppo_applies_the_tis_weights_in_the_advantage_step(ppo_world):
    from ppo_support import tiny_module

    class EngineLogprobs(type(tiny_module(ppo_world))):  # an engine whose log-probs are half the trainer's probability
        def generate_rollout(self, prompts, *, model, num_samples=1):
            episodes = super().generate_rollout(prompts, model=model, num_samples=num_samples)
            return episodes.with_values(engine_logprobs=episodes.logprobs - math.log(2))

    prompts = {"input_ids": torch.tensor([[40, 41], [42, 43]]), "attention_mask": torch.ones(2, 2, dtype=torch.long)}
    results = {}
    for cap in (None, 1.5):
        module = tiny_module(ppo_world, cls=EngineLogprobs, truncated_is_cap=cap, max_new_tokens=4)
        module.configure_model()
        torch.manual_seed(0)
        results[cap] = module.make_rollout(prompts)
    (plain, plain_metrics), (corrected, metrics) = results[None], results[1.5]
    assert metrics["engine/tis_weight"].item() == pytest.approx(1.5) and "engine/tis_weight" not in plain_metrics
    torch.testing.assert_close(corrected.advantages, plain.advantages * 1.5)  # capped weight min(2, 1.5)
    assert plain.correction_mask is None and plain.loss_mask is plain.response_mask

    # Every ratio is 2: a token mask in [0.5, 3] keeps every token, one in [0.5, 1.5] none of them.
    for high, share in ((3.0, 0.0), (1.5, 1.0)):
        correction = {"mask": "token", "mask_high": high}
        module = tiny_module(ppo_world, cls=EngineLogprobs, correction=correction, max_new_tokens=4)
        module.configure_model()
        torch.manual_seed(0)
        masked, metrics = module.make_rollout(prompts)
        assert metrics["engine/masked_tokens"].item() == pytest.approx(share)
        assert masked.loss_mask.any().item() == (share == 0.0)
        torch.testing.assert_close(masked.advantages, plain.advantages)  # a mask weights nothing


def test_correction_refuses_log_probs_of_another_rollout():
    with pytest.raises(RuntimeError, match="shape"):
        engine_logprob_correction(episodes_with(torch.zeros(2, 3), torch.zeros(2, 5)), RolloutCorrectionSettings())


def test_ppo_module_checks_the_tis_cap(ppo_world):
    from ppo_support import tiny_module

    with pytest.raises(ConfigError, match="correction.truncated_is_cap must be >= 1, got 0.5"):
        tiny_module(ppo_world, truncated_is_cap=0.5)
    module = tiny_module(ppo_world, truncated_is_cap=2.0)
    assert module.correction.truncated_is_cap == module.hparams.correction["truncated_is_cap"] == 2.0


def test_full_tensors_by_layer_streams_every_weight_once_layer_by_layer(tiny_dir):
    from lit_rlhf.models.loading import load_causal_lm

    model = load_causal_lm(str(tiny_dir / "config.json"))
    chunks = list(full_tensors_by_layer(model))
    assert len(chunks) == model.config.num_hidden_layers + 1  # one per decoder layer, then embeddings / norm / head
    for i, chunk in enumerate(chunks[:-1]):
        assert all(key.startswith(f"model.layers.{i}.") for key in chunk)
    streamed = {key: value for chunk in chunks for key, value in chunk.items()}
    state = model.state_dict()
    assert streamed.keys() == state.keys() and all(torch.equal(streamed[k], state[k]) for k in state)


def test_tensor_encoding_round_trips_every_dtype():
    from lit_rlhf.engines.vllm import decode_tensor, encode_tensor

    for tensor in (torch.randn(3, 4), torch.randn(5).bfloat16(), torch.randn(2, 2).half(), torch.randn(7)[::2]):
        name, restored = decode_tensor(*encode_tensor("w", tensor))
        assert name == "w" and restored.dtype == tensor.dtype and torch.equal(restored, tensor)


def test_kv_cache_that_cannot_hold_one_sequence_is_one_clear_error():
    from lit_rlhf.engines.vllm import check_kv_cache_fits, kv_cache_bytes_per_token

    config = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, hidden_size=128, num_hidden_layers=4)
    assert kv_cache_bytes_per_token(config, "bfloat16") == 2 * 4 * 2 * 32 * 2
    check_kv_cache_fits(config, "bfloat16", 1024 * 128, max_model_len=128)  # exactly one sequence: fits
    with pytest.raises(ConfigError, match="kv_cache_memory_gb"):
        check_kv_cache_fits(config, "float32", 1024 * 128, max_model_len=128)


def test_engine_options_are_checked_when_configured():
    from lit_rlhf.engines.vllm import VLLMEngine

    with pytest.raises(ConfigError, match="gpu_memory_utilization must be in"):
        VLLMEngine(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        VLLMEngine(dtype="int8")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_setup_names_the_install_and_nothing_imports_it():
    from lit_rlhf.engines.vllm import VLLMEngine

    with pytest.raises(ConfigError, match=r'vllm package .*pip install -e "\.\[vllm\]"'):
        VLLMEngine().setup(torch.nn.Linear(1, 1), "policy_dir")
    # Importing the package, the engine module and the CLI never imports vllm (it is only needed once selected).
    code = "import sys, lit_rlhf.cli, lit_rlhf.engines.vllm; print('vllm' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def _gather_by_layer_on_rank(rank: int, world: int, config_path: str, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lit_rlhf.models.loading import load_causal_lm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = load_causal_lm(config_path)
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        from torch.distributed.tensor import DTensor

        assert all(isinstance(v, DTensor) for v in model.state_dict().values())  # really sharded
        chunks = [{k: v.clone() for k, v in chunk.items()} for chunk in full_tensors_by_layer(model)]
        if rank == 0:
            torch.save(chunks, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~20 s idle, ~90 s on a busy 2-core machine
def test_full_tensors_by_layer_gathers_fsdp2_shards(tiny_dir, tmp_path):
    """Under FSDP2 (2 gloo processes) every rank streams the full, unsharded tensors, equal to the model's own."""
    import socket

    import torch.multiprocessing as mp

    from lit_rlhf.models.loading import load_causal_lm

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "chunks.pt"
    mp.spawn(_gather_by_layer_on_rank, args=(2, str(tiny_dir / "config.json"), port, str(out)), nprocs=2)
    torch.manual_seed(0)
    state = load_causal_lm(str(tiny_dir / "config.json")).state_dict()
    chunks = torch.load(out)
    assert len(chunks) == 3  # two decoder layers, then the rest
    streamed = {key: value for chunk in chunks for key, value in chunk.items()}
    assert streamed.keys() == state.keys()
    for key, value in state.items():
        assert type(streamed[key]) is torch.Tensor and torch.equal(streamed[key], value), key


def test_vllm_engine_returns_episodes_with_its_own_log_probs_without_vllm(monkeypatch):
    """The engine's glue, with a stand-in for vLLM: training rollouts come from the engine (log-probs as the
    episodes' engine_logprobs, no trainer log-probs), evaluation samples the given model with Hugging Face generate."""
    import sys

    from lit_rlhf.engines import SamplingSettings
    from lit_rlhf.engines.vllm import VLLMEngine

    step = lambda token, logprob: {token: SimpleNamespace(logprob=logprob)}  # noqa: E731
    completions = [
        SimpleNamespace(token_ids=[5, 1], logprobs=[step(5, -0.5), step(1, -0.25)]),
        SimpleNamespace(token_ids=[6, 7, 8], logprobs=[step(6, -1.0), step(7, -2.0), step(8, -3.0)]),
    ]
    calls = []
    llm = SimpleNamespace(
        collective_rpc=lambda name, args=(): calls.append(name),
        generate=lambda requests, params, use_tqdm: [SimpleNamespace(outputs=completions)],
    )
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kwargs: kwargs))
    engine = VLLMEngine()
    engine.llm, engine.stale = llm, False
    prompts = {"input_ids": torch.tensor([[0, 3, 4]]), "attention_mask": torch.tensor([[0, 1, 1]])}
    settings = SamplingSettings(max_new_tokens=3, temperature=1.0)
    episodes = engine.generate(torch.nn.Linear(1, 1), prompts, 2, settings, eos_token_id=1, pad_token_id=0)
    assert calls == ["lit_rlhf_reseed"] and episodes.logprobs is None
    assert episodes.responses.tolist() == [[5, 1, 0], [6, 7, 8]] and episodes.ended.tolist() == [True, False]
    assert episodes.engine_logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]]
    assert episodes.prompts.tolist() == [[0, 3, 4], [0, 3, 4]]

    hf = []
    monkeypatch.setattr("lit_rlhf.engines.vllm.hf_generate", lambda *args, **kwargs: hf.append(args[0]) or "hf")
    model = torch.nn.Linear(1, 1)
    assert engine.generate(model, prompts, 1, settings, eos_token_id=1, pad_token_id=0, training=False) == "hf"
    assert hf == [model] and calls == ["lit_rlhf_reseed"]  # evaluation never touches the engine
