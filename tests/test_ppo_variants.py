"""The two worked-example subclasses: a custom reward term and a critic-free group baseline."""

from __future__ import annotations

import pytest
import torch

from lit_rlhf.algorithms import masked_sum, rloo_advantages
from lit_rlhf.errors import ConfigError
from lit_rlhf.modules import FormatRewardPPOModule, GroupBaselinePPOModule
from lit_rlhf.modules.rollout import concat_responses
from ppo_support import REWARD_BIAS, changed, one_cpu_thread, ppo_world, snapshot, tiny_data, tiny_module, tiny_trainer  # noqa: F401


def test_format_reward_adds_bonus_and_length_penalty_to_the_rm_score(ppo_world, tiny_tokenizer):
    module = tiny_module(ppo_world, cls=FormatRewardPPOModule, format_pattern=r"[a-z]( [a-z])*", format_bonus=1.0, length_penalty=0.1)
    module.configure_model()
    eos = tiny_tokenizer.eos_token_id
    good = tiny_tokenizer("a b", add_special_tokens=False)["input_ids"] + [eos]  # matches, 4 tokens with EOS
    bad = tiny_tokenizer("A!!", add_special_tokens=False)["input_ids"] + [eos]
    prompt = torch.tensor([[40, 41], [40, 41]])
    rollout = concat_responses(prompt, torch.ones_like(prompt), torch.tensor([good, bad]), eos)
    scores = module.score_responses(rollout)
    assert torch.allclose(scores, rollout.rm_scores + REWARD_BIAS + torch.tensor([1.0 - 0.4, -0.4]))
    with pytest.raises(ConfigError, match="regular expression"):
        tiny_module(ppo_world, cls=FormatRewardPPOModule, format_pattern="(")


def test_format_reward_module_trains(ppo_world, tmp_path):
    module = tiny_module(ppo_world, cls=FormatRewardPPOModule, format_pattern=r"\w+", length_penalty=0.01)
    tiny_trainer(tmp_path, max_steps=2).fit(module, tiny_data(ppo_world))
    assert module.hparams.format_pattern == r"\w+" and module.rollouts_done == 1  # its own args are hyperparameters too


def test_group_baseline_trains_without_a_value_model(ppo_world, tmp_path):
    module = tiny_module(ppo_world, cls=GroupBaselinePPOModule, baseline="rloo", samples_per_prompt=2)
    assert module.prompts_per_rollout == 2  # 4 episodes = 2 prompts x 2 samples
    module.configure_model()
    before = snapshot(module.policy)
    trainer = tiny_trainer(tmp_path, max_steps=4)
    trainer.fit(module, tiny_data(ppo_world))
    assert module.value_model is None and changed(before, module.policy)
    assert "train/value_loss" not in trainer.callback_metrics
    assert not any(k.startswith("value_model.") for k in module.state_dict())

    rollout = module.last_rollout
    assert torch.equal(rollout.prompts[0::2], rollout.prompts[1::2])  # the samples of a prompt sit side by side
    returns = masked_sum(rollout.rewards, rollout.response_mask, dim=1)
    first_token = rollout.advantages[:, 0]
    assert torch.allclose(first_token, rloo_advantages(returns, 2), atol=1e-6)
    assert torch.allclose(first_token.view(-1, 2).sum(1), torch.zeros(2), atol=1e-6)  # leave-one-out centres each group
    assert torch.all(rollout.advantages[~rollout.response_mask] == 0)


def test_group_baseline_needs_several_samples(ppo_world):
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        tiny_module(ppo_world, cls=GroupBaselinePPOModule, samples_per_prompt=1)
