"""PPOModule end to end on tiny models: what trains, what stays frozen, what ptx changes, what a
checkpoint holds, and how bad input and bad numbers stop a run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_char_tokenizer
from lightning.pytorch import Callback
from ppo_support import REWARD_BIAS, changed, one_cpu_thread, ppo_world, snapshot, tiny_data, tiny_module, tiny_trainer  # noqa: F401

from lit_rlhf.episodes import Episodes, RolloutSummary, concat_responses, response_mask_from_tokens
from lit_rlhf.errors import ConfigError
from lit_rlhf.models.loading import load_scalar_model, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory
from lit_rlhf.models.sources import ModelSourceError
from lit_rlhf.modules import PPOModule
from lit_rlhf.modules.rollout import response_values
from lit_rlhf.reliability.guards import TrainingStopped


def test_fit_trains_policy_and_value_and_never_the_frozen_models(ppo_world, tmp_path):
    module = tiny_module(ppo_world)
    data = tiny_data(ppo_world, module)
    trainer = tiny_trainer(tmp_path, max_steps=4)  # 2 rollouts x 2 optimizer steps
    module.configure_model()
    models = {
        "policy": module.policy,
        "value_model": module.value_model,
        "reference_model": module.reference_model,
        "reward_model": module.rewards[0].reward_model,
        "ema": module.ema,
    }
    before = {name: {k: v.clone() for k, v in model.state_dict().items()} for name, model in models.items()}
    trainer.fit(module, data)

    assert trainer.global_step == 4 and module.rollouts_done == 2  # global_step counts optimizer steps
    for name in ("policy", "value_model", "ema"):
        assert any(not torch.equal(v, models[name].state_dict()[k]) for k, v in before[name].items()), (
            f"{name} did not change"
        )
    # The EMA averages the trained parameters only: one buffer per parameter of the policy.
    assert len(module.ema.names) == len(list(module.policy.parameters()))
    for name in ("reference_model", "reward_model"):
        model = models[name]
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before[name].items()), f"frozen {name} changed"
        assert not model.training and all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert module.policy.training and module.value_model.training  # back in train mode after generation
    metrics = trainer.callback_metrics
    for key in (
        "rollout/score",
        "rollout/reward/reward_model",
        "rollout/kl",
        "rollout/entropy",
        "train/clip_fraction",
        "train/approx_kl",
        "train/value_loss",
        "train/explained_variance",
        "rollout/response_length",
        "rollout/eos_rate",
    ):
        assert key in metrics, key
    for phase in ("generation", "scoring", "update"):  # throughput of each phase; MFU only where the peak is known
        for unit in ("tokens_per_sec", "flops_per_sec"):
            value = float(metrics[f"perf/{phase}_{unit}"])
            assert math.isfinite(value) and value > 0, (phase, unit, value)
        assert f"perf/{phase}_mfu" not in metrics  # on CPU: no peak, no MFU
    # One reward component (the reward model) with weight 1: the score is its centred score.
    assert metrics["rollout/score"] == pytest.approx(float(metrics["rollout/reward/reward_model"]), abs=1e-5)


class RewardsLetterA(PPOModule):
    """A task a random tiny model can learn in a few rollouts: reward = 10 x the share of 'a' in the response."""

    def score_responses(self, rollout: Episodes) -> torch.Tensor:
        target = self.tokenizer.convert_tokens_to_ids("a")
        hits = ((rollout.responses == target) & rollout.response_mask).sum(1)
        return 10 * hits / rollout.response_mask.sum(1)


def test_ppo_raises_the_reward_it_is_given(ppo_world, tmp_path):
    scores = []
    module = tiny_module(
        ppo_world,
        cls=RewardsLetterA,
        gamma_ptx=0.0,
        rollout_batch_size=12,
        minibatch_size=4,
        micro_batch_size=4,
        max_new_tokens=8,
        learning_rate=1e-2,
        ema_decay=None,
    )
    record = type(
        "Record",
        (Callback,),
        {
            "on_train_batch_end": lambda self, t, m, outputs, *a: scores.append(
                float(RolloutSummary.from_outputs(outputs).episodes.scores.mean())
            )
        },
    )
    tiny_trainer(tmp_path, max_steps=45, max_epochs=100, callbacks=[record()]).fit(module, tiny_data(ppo_world, module))
    assert len(scores) == 15
    assert sum(scores[:3]) / 3 < 1.0 and sum(scores[-3:]) / 3 > 4.0, scores


def test_gamma_ptx_changes_the_update_and_zero_is_plain_ppo(ppo_world, tmp_path):
    weights = {}
    for gamma_ptx in (0.0, 5.0):
        torch.manual_seed(0)
        module = tiny_module(ppo_world, gamma_ptx=gamma_ptx, ema_decay=None)
        summaries = []
        record = type(
            "Record",
            (Callback,),
            {
                "on_train_batch_end": lambda self, t, m, outputs, *a, summaries=summaries: summaries.append(
                    RolloutSummary.from_outputs(outputs)
                )
            },
        )
        tiny_trainer(tmp_path / str(gamma_ptx), max_steps=2, callbacks=[record()]).fit(
            module, tiny_data(ppo_world, module)
        )
        weights[gamma_ptx] = snapshot(module.policy)
        assert ("ptx/loss" in summaries[-1].stats) == (gamma_ptx > 0) and summaries[-1].ptx_gamma == gamma_ptx
    assert any(not torch.equal(weights[0.0][k], weights[5.0][k]) for k in weights[0.0])


def test_checkpoint_holds_only_trained_state_and_loads_without_frozen_models(ppo_world, tmp_path):
    module = tiny_module(ppo_world, target_kl=1.0)
    trainer = tiny_trainer(tmp_path, max_steps=2, enable_checkpointing=True)
    trainer.fit(module, tiny_data(ppo_world, module))
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    prefixes = {key.split(".")[0] for key in checkpoint["state_dict"]}
    assert prefixes == {"policy", "value_model", "ema"}
    assert checkpoint["ppo"]["rollouts_done"] == 1 and "data_position" not in checkpoint["ppo"]  # the data module's
    assert checkpoint["hyper_parameters"]["kl"]["target"] == 1.0  # groups as plain dicts: loads with weights_only
    assert torch.load(path, weights_only=True)["hyper_parameters"]["batch"]["rollout_batch_size"] == 4
    assert checkpoint["ppo"]["kl_controller"]["beta"] == module.kl_controller.beta

    fresh = tiny_module(ppo_world, target_kl=1.0)
    fresh.configure_model()
    fresh.load_state_dict(checkpoint["state_dict"])  # strict, yet the frozen models are absent
    fresh.on_load_checkpoint(checkpoint)
    assert not changed(snapshot(module.policy), fresh.policy)
    assert fresh.kl_controller.beta == module.kl_controller.beta
    with pytest.raises(RuntimeError, match="missing"):
        fresh.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("value_model.")})


def test_nan_reward_stops_with_a_clear_message_and_no_checkpoint(ppo_world, tmp_path):
    class BrokenReward(PPOModule):
        def score_responses(self, rollout: Episodes) -> torch.Tensor:
            return torch.full((len(rollout),), float("nan"))

    module = tiny_module(ppo_world, cls=BrokenReward)
    module.configure_model()
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=4, enable_checkpointing=True)
    with pytest.raises(TrainingStopped, match="reward is NaN or inf at rollout 0"):
        trainer.fit(module, tiny_data(ppo_world, module))
    assert not changed(before, module.policy)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_missing_stage_outputs_name_the_command_that_makes_them(ppo_world, tmp_path):
    with pytest.raises(ModelSourceError, match="configs/sft.yaml"):
        PPOModule(policy=str(tmp_path / "runs/sft/model"), reward_model=ppo_world["rm"])
    with pytest.raises(ModelSourceError, match="configs/rm.yaml"):
        PPOModule(policy=ppo_world["sft"], reward_model=str(tmp_path / "runs/rm/model"))


def test_reward_model_with_another_tokenizer_is_refused(ppo_world, tmp_path):
    other = load_scalar_model(ppo_world["rm"])
    tokenizer_dir = build_char_tokenizer(tmp_path / "tok", chat_template=None)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    tokenizer.add_tokens(["<extra>"])  # one more token: the ids no longer mean the same thing
    save_hf_directory(other, tokenizer, tmp_path / "rm")
    with pytest.raises(ConfigError, match="different tokenizer"):
        PPOModule(policy=ppo_world["sft"], reward_model=str(tmp_path / "rm"))


def test_reward_model_with_a_smaller_vocabulary_and_no_tokenizer_is_refused(ppo_world, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(ppo_world["rm"])
    config.vocab_size = 10  # the policy's token ids would index past its embeddings (an IndexError mid-rollout)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "small_rm")  # no tokenizer files
    with pytest.raises(ConfigError, match="has 10 token embeddings but the policy's tokenizer has"):
        PPOModule(policy=ppo_world["sft"], reward_model=str(tmp_path / "small_rm"))


def test_bad_batch_sizes_are_config_errors(ppo_world):
    with pytest.raises(ConfigError, match="minibatch_size"):
        tiny_module(ppo_world, rollout_batch_size=6, minibatch_size=4)


def test_response_layout_masks_values_and_first_update_ratio(ppo_world):
    eos = 1
    mask, ended = response_mask_from_tokens(torch.tensor([[5, 1, 1, 0], [5, 6, 7, 8], [1, 0, 0, 0]]), eos)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert ended.tolist() == [True, False, True]

    module = tiny_module(ppo_world)
    module.configure_model()
    seen_modes = []
    original = module.generate_rollout

    def spy(prompts, *, model, num_samples=1):
        seen_modes.append(model.training)
        return original(prompts, model=model, num_samples=num_samples)

    module.generate_rollout = spy
    prompts = {
        "input_ids": torch.tensor([[0, 0, 40, 41], [42, 43, 44, 45]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
    }
    rollout, _ = module.make_rollout(prompts)
    assert seen_modes == [False] and module.policy.training  # eval while generating, train again after
    assert rollout.prompt_length == 4 and rollout.values.shape == rollout.response_mask.shape
    # policy == reference before any update (sampling-time log-probs come from the KV-cached pass: float noise)
    assert torch.allclose(rollout.kl, torch.zeros_like(rollout.kl), atol=1e-5)
    assert torch.allclose(rollout.scores, rollout.component_scores["reward_model"])
    # per-token rewards: the score lands on the last response token of each row
    last = rollout.response_mask.sum(1) - 1
    assert torch.allclose(rollout.rewards[torch.arange(2), last], rollout.scores)
    # the value of the state before token t is read at position P - 1 + t
    full = module.value_model.score(
        module.value_model.model(
            input_ids=rollout.input_ids,
            attention_mask=rollout.attention_mask,
            position_ids=(rollout.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).last_hidden_state
    )
    with torch.no_grad():
        assert torch.allclose(response_values(module.value_model, rollout), full[:, 3:-1, 0] + REWARD_BIAS, atol=1e-5)
    # before any update the new policy equals the old one: ratio 1, nothing clipped
    _, stats = module.ppo_loss(rollout, rollout.response_mask.sum())
    assert (
        float(stats["train/approx_kl"]) == pytest.approx(0.0, abs=1e-6) and float(stats["train/clip_fraction"]) == 0.0
    )


@pytest.mark.parametrize(
    "temperature, top_p, generation_batch_size", [(1.0, 1.0, None), (0.7, 0.8, 1), (0.0, 1.0, None)]
)
def test_log_probs_recorded_while_sampling_equal_a_scoring_forward_pass(
    ppo_world, temperature, top_p, generation_batch_size
):
    """Recorded at sampling time: the full distribution at the temperature (top-p only truncates what is drawn)."""
    from lit_rlhf.modules.rollout import logprobs_and_entropy

    module = tiny_module(
        ppo_world, temperature=temperature, top_p=top_p, generation_batch_size=generation_batch_size, max_new_tokens=8
    )
    module.configure_model()
    module.policy.generation_config.repetition_penalty = 5.0  # saved settings must not reach the sampler
    module.policy.eval()
    prompts = {
        "input_ids": torch.tensor([[0, 0, 40, 41], [42, 43, 44, 45], [0, 46, 47, 48]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]),
    }
    torch.manual_seed(0)
    with torch.no_grad():
        rollout = module.generate_rollout(prompts, model=module.policy)
        logprobs, entropy = logprobs_and_entropy(module.policy, rollout, temperature)
    mask = rollout.response_mask
    assert rollout.logprobs.shape == mask.shape and rollout.entropy.shape == mask.shape
    assert torch.allclose(rollout.logprobs[mask], logprobs[mask], atol=1e-5)
    assert torch.allclose(rollout.entropy[mask], entropy[mask], atol=1e-4)


def test_a_generate_override_without_log_probs_gets_them_from_a_forward_pass(ppo_world):
    from lit_rlhf.modules.rollout import logprobs_and_entropy

    module = tiny_module(ppo_world, max_new_tokens=4)
    module.configure_model()
    original = module.generate_rollout

    def without_logprobs(prompts, *, model, num_samples=1):
        return original(prompts, model=model, num_samples=num_samples).with_values(logprobs=None, entropy=None)

    module.generate_rollout = without_logprobs
    rollout, _ = module.make_rollout(
        {"input_ids": torch.tensor([[40, 41]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    )
    with torch.no_grad():
        expected, _ = logprobs_and_entropy(module.policy.eval(), rollout, 1.0)
    assert torch.allclose(rollout.logprobs, expected, atol=1e-6)


def test_missing_eos_penalty_applies_only_to_unfinished_responses(ppo_world):
    module = tiny_module(ppo_world, missing_eos_penalty=2.0)
    module.configure_model()
    rollout = concat_responses(
        torch.tensor([[40, 41], [40, 41]]), torch.ones(2, 2, dtype=torch.long), torch.tensor([[50, 1], [50, 51]]), 1
    )
    rollout = rollout.with_values(component_scores={"reward_model": module.rewards[0].score(rollout)})
    scores = module.score_responses(rollout)
    assert torch.allclose(scores, rollout.component_scores["reward_model"] - torch.tensor([0.0, 2.0]))


def test_shipped_ppo_config_runs_and_exports(in_scratch_dir, ppo_world):
    from transformers import AutoModelForCausalLM

    from lit_rlhf.cli import main

    overrides = {
        "policy": ppo_world["sft"],
        "reward_model": ppo_world["rm"],
        "batch.rollout_batch_size": 4,
        "batch.minibatch_size": 2,
        "batch.micro_batch_size": 2,
        "sampling.max_new_tokens": 6,
        "ptx.micro_batch_size": 8,
    }
    args = ["fit", "--config", "configs/ppo.yaml", "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false"]
    args += [f"--model.init_args.{k}={v}" for k, v in overrides.items()]
    args += [
        "--data.init_args.prompts",
        ppo_world["prompts.jsonl"],
        "--data.init_args.val_prompts",
        ppo_world["prompts.jsonl"],
        "--trainer.limit_val_batches",
        "1",
        "--trainer.val_check_interval",
        "2",
        "--data.init_args.val_batch_size",
        "4",
    ]
    main(args)
    export = in_scratch_dir / "runs/ppo/model"
    assert AutoModelForCausalLM.from_pretrained(export).config.model_type == "llama"
    assert (in_scratch_dir / "runs/ppo/checkpoints/last.ckpt").exists()
    assert list((in_scratch_dir / "runs/ppo").glob("wandb/offline-run-*")), "wandb did not log offline"


def test_sampling_ignores_the_models_saved_generation_settings(ppo_world):
    from lit_rlhf.distributed.generation import sample_continuations
    from lit_rlhf.models.loading import load_causal_lm

    model = load_causal_lm(ppo_world["sft"], trainable=False)
    model.generation_config.top_k = 1  # inherited, this would make every sample the greedy one
    model.generation_config.repetition_penalty = 10.0
    prompt = torch.tensor([[40, 41, 42]] * 8)
    torch.manual_seed(0)
    samples = sample_continuations(
        model,
        prompt,
        torch.ones_like(prompt),
        max_new_tokens=6,
        temperature=1.0,
        top_p=1.0,
        eos_token_id=1,
        pad_token_id=0,
    )
    assert len({tuple(row) for row in samples.tolist()}) > 1
