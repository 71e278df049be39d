"""Objectives beyond the paper's PPO, as settings and components: rewards (model, function, gold), their
weighted sum, GRPO/RLOO without a critic, the KL as a loss term, an entropy bonus, and DPO — the README's
"Writing your own objective" examples run here on the sandbox."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Callback
from ppo_support import one_cpu_thread, ppo_world, tiny_data, tiny_module, tiny_trainer  # noqa: F401
from safetensors.torch import load_file

from lit_rlhf.episodes import RolloutSummary, concat_responses
from lit_rlhf.errors import ConfigError
from lit_rlhf.rewards import FunctionReward, RewardError, RewardModelScore
from lit_rlhf.sandbox import DATA_DIR, GoldLabeler
from lit_rlhf.sandbox.rewards import GoldReward, exact_answer

SANDBOX_BASE = "lit_rlhf/sandbox/assets/base_model"


def answer_length(prompt: str, response: str, record: dict) -> float:
    """Test reward: the record's `target` minus the distance of the response length from it."""
    return -abs(len(response) - record.get("target", 3))


def raising(prompt: str, response: str, record: dict) -> float:
    raise KeyError("answer")


def not_a_number(prompt: str, response: str, record: dict):
    return "high"


def reward_batch(tokenizer, records):
    rollout = concat_responses(
        torch.tensor([[40, 41], [40, 41]]),
        torch.ones(2, 2, dtype=torch.long),
        torch.tensor([[50, 51, 1], [52, 1, 0]]),
        eos_token_id=1,
    )
    return rollout.with_values(records=records, tokenizer=tokenizer)


def test_function_reward_reads_record_fields_and_names_the_record_when_it_fails(tiny_tokenizer):
    batch = reward_batch(tiny_tokenizer, [{"target": 2}, {"target": 5}])
    assert batch.response_texts == [tiny_tokenizer.decode([50, 51]), tiny_tokenizer.decode([52])]
    scores = FunctionReward("test_objectives:answer_length").score(batch)
    assert scores.tolist() == [0.0, -4.0]
    with pytest.raises(RewardError, match=r"reward 'raising' .*raised KeyError.*record \{'target': 2\}"):
        FunctionReward("test_objectives.raising").score(batch)
    with pytest.raises(RewardError, match="returned 'high', not a finite number"):
        FunctionReward("test_objectives:not_a_number").score(batch)
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        FunctionReward("test_objectives:missing")
    with pytest.raises(ConfigError, match="cannot import module"):
        FunctionReward("no_such_module:f")


def test_gold_reward_and_exact_answer_judge_sandbox_records():
    record = json.loads((DATA_DIR / "prompts_train.jsonl").read_text().splitlines()[0])
    assert exact_answer(record["prompt"], record["answer"], record) == 1.0
    assert exact_answer(record["prompt"], record["answer"] + ", there you go", record) == 0.0
    gold = GoldReward()
    assert gold.labeler.score(record, record["answer"]) == GoldLabeler().score(record, record["answer"]) == 1.0


def test_rewards_are_summed_with_their_weights_and_logged_by_name(ppo_world, tmp_path):
    rewards = [RewardModelScore(weight=0.5), FunctionReward("test_objectives:answer_length", weight=2.0, name="length")]
    module = tiny_module(ppo_world, rewards=rewards, gamma_ptx=0.0)
    module.configure_model()
    records = [{"target": 3}, {"target": 1}]
    rollout = concat_responses(
        torch.tensor([[40, 41], [40, 41]]),
        torch.ones(2, 2, dtype=torch.long),
        torch.tensor([[50, 51, 1], [52, 1, 0]]),
        eos_token_id=1,
    )
    rollout = rollout.with_values(records=records, tokenizer=module.tokenizer)
    rollout = module.score_episodes(rollout, {"records": records}, module.policy, 1)
    scores, parts = rollout.scores, rollout.component_scores
    assert set(parts) == {"reward_model", "length"}
    torch.testing.assert_close(scores, 0.5 * parts["reward_model"] + 2.0 * parts["length"])
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, tiny_data(ppo_world, module, ptx_ratio=0))
    assert {"rollout/reward/reward_model", "rollout/reward/length"} <= set(trainer.callback_metrics)


def test_critic_free_estimators_build_no_value_model_and_refuse_critic_settings(ppo_world, tmp_path):
    module = tiny_module(ppo_world, advantage_estimator="rloo", samples_per_prompt=2, value_learning_rate=None)
    summaries = []
    record = type(
        "Record",
        (Callback,),
        {"on_train_batch_end": lambda self, t, m, outputs, *a: summaries.append(RolloutSummary.from_outputs(outputs))},
    )
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[record()])
    trainer.fit(module, tiny_data(ppo_world, module))
    assert module.value_model is None and len(trainer.optimizers[0].param_groups) == 1
    assert summaries[-1].episodes.values is None and "train/value_loss" not in summaries[-1].stats
    advantages = summaries[-1].episodes.advantages
    per_response = advantages.max(dim=1).values  # RLOO: one advantage per response, on every token
    assert torch.allclose(per_response.view(-1, 2).sum(1), torch.zeros(2), atol=1e-5)  # leave-one-out pairs cancel
    with pytest.raises(
        ConfigError, match="value.learning_rate set, but advantage.estimator=grpo trains no value model"
    ):
        tiny_module(ppo_world, advantage_estimator="grpo", samples_per_prompt=2)  # TINY sets value_learning_rate
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        tiny_module(ppo_world, advantage_estimator="grpo", samples_per_prompt=1, value_learning_rate=None)


def test_kl_as_a_loss_term_and_entropy_bonus_use_one_policy_forward(ppo_world):
    module = tiny_module(ppo_world, kl_placement="loss", kl_estimator="k3", entropy_coef=0.01, kl_coef=0.5)
    module.configure_model()
    prompts = {
        "input_ids": torch.tensor([[0, 40, 41], [42, 43, 44]]),
        "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
    }
    rollout, _ = module.make_rollout(prompts)
    # The KL is not in the reward: only the score, on the last token.
    assert torch.allclose(rollout.rewards.sum(1), rollout.scores)
    calls = []
    handle = module.policy.register_forward_hook(lambda *args: calls.append(1))
    loss, stats = module.ppo_loss(rollout, rollout.response_mask.sum())
    handle.remove()
    assert len(calls) == 1  # log-probs and entropy come from the same forward
    assert {"train/kl_loss", "train/entropy"} <= set(stats) and float(stats["train/entropy"]) > 0
    loss.backward()
    assert module.policy.get_input_embeddings().weight.grad is not None


def test_grpo_with_a_verifiable_reward_and_no_reward_model_runs_from_its_config(in_scratch_dir):
    from lit_rlhf.cli import main

    # The untrained base model never answers exactly (exact_answer is 0 for every sample, so no advantage): add the
    # gold labeler's partial credit, as a second component, so a few rollouts have something to learn from.
    extra = in_scratch_dir / "gold.yaml"
    extra.write_text(
        "model:\n  init_args:\n    rewards:\n"
        "      - {class_path: lit_rlhf.rewards.FunctionReward,"
        " init_args: {function: 'lit_rlhf.sandbox.rewards:exact_answer'}}\n"
        "      - {class_path: lit_rlhf.sandbox.GoldReward}\n"
    )
    main(
        [
            "fit",
            "--config",
            "configs/grpo.yaml",
            "--config",
            str(extra),
            "--model.init_args.policy",
            SANDBOX_BASE,
            "--model.init_args.batch.rollout_batch_size",
            "8",
            "--model.init_args.batch.samples_per_prompt",
            "4",
            "--model.init_args.batch.minibatch_size",
            "8",
            "--model.init_args.batch.micro_batch_size",
            "4",
            "--model.init_args.sampling.max_new_tokens",
            "8",
            "--trainer.max_steps",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger",
            "false",
        ]
    )
    exported = load_file(in_scratch_dir / "runs/grpo/model/model.safetensors")
    initial = load_file(f"{SANDBOX_BASE}/model.safetensors")
    assert any(not torch.equal(exported[k], initial[k]) for k in initial if k in exported)


def test_dpo_trains_on_ranked_comparisons_from_its_config(in_scratch_dir):
    from lit_rlhf.cli import main

    rows = [json.loads(line) for line in (DATA_DIR / "sft_train.jsonl").read_text().splitlines()[:24]]
    comparisons = in_scratch_dir / "runs/comparisons"
    comparisons.mkdir(parents=True)
    with open(comparisons / "train.jsonl", "w") as f:
        for row in rows:  # K = 3: the clean answer, with chatter, and a wrong one
            answer = row["response"].split(",")[0]
            f.write(
                json.dumps({"prompt": row["prompt"], "responses": [answer, answer + ", there you go", "no idea"]})
                + "\n"
            )
    (comparisons / "val.jsonl").write_text((comparisons / "train.jsonl").read_text())
    main(
        [
            "fit",
            "--config",
            "configs/dpo.yaml",
            "--model.init_args.policy",
            SANDBOX_BASE,
            "--trainer.max_steps",
            "3",
            "--data.init_args.batch_size",
            "8",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger",
            "false",
        ]
    )
    exported = load_file(in_scratch_dir / "runs/dpo/model/model.safetensors")
    initial = load_file(f"{SANDBOX_BASE}/model.safetensors")
    assert any(not torch.equal(exported[k], initial[k]) for k in initial if k in exported)


def readme_objective_example() -> str:
    """The README's "A new objective in code" example (``my_objective.py``), as written there (or in docs/)."""
    from conftest import REPO_ROOT

    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]:
        for block in page.read_text(encoding="utf-8").split("```python")[1:]:
            code = block.split("```")[0]
            if "class UnclippedPG(PPOModule)" in code:
                return code
    raise AssertionError("the UnclippedPG example is in neither README.md nor docs/")


def test_the_readme_objective_example_runs_unchanged(in_scratch_dir, ppo_world, monkeypatch):
    from lit_rlhf.cli import main

    (in_scratch_dir / "my_objective.py").write_text(readme_objective_example())
    monkeypatch.syspath_prepend(str(in_scratch_dir))
    from my_objective import UnclippedPG

    module = tiny_module(ppo_world, cls=UnclippedPG, ema_decay=None)
    module.configure_model()
    prompts = {
        "input_ids": torch.tensor([[0, 40, 41], [42, 43, 44]]),
        "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
    }
    rollout, _ = module.make_rollout(prompts)
    loss, stats = module.ppo_loss(rollout, rollout.response_mask.sum())
    assert "train/clip_fraction" not in stats  # its own policy loss, not the clipped surrogate
    # The README's command line, on the tiny world: `--model my_objective.UnclippedPG` with configs/ppo.yaml.
    sizes = {
        "batch.rollout_batch_size": 4,
        "batch.minibatch_size": 2,
        "batch.micro_batch_size": 2,
        "sampling.max_new_tokens": 6,
        "ptx.micro_batch_size": 8,
    }
    main(
        [
            "fit",
            "--config",
            "configs/ppo.yaml",
            "--model",
            "my_objective.UnclippedPG",
            "--trainer.max_steps",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger",
            "false",
            "--data.init_args.prompts",
            ppo_world["prompts.jsonl"],
            f"--model.init_args.policy={ppo_world['sft']}",
            f"--model.init_args.reward_model={ppo_world['rm']}",
            *[f"--model.init_args.{k}={v}" for k, v in sizes.items()],
        ]
    )
    assert (in_scratch_dir / "runs/ppo/model/config.json").exists()
