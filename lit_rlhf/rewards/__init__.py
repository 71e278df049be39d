"""Rewards for the policy stages, as components chosen and weighted from YAML.

``PPOModule(rewards=[...])`` sums ``weight x score`` over its components; each component's mean
score is logged as ``rollout/reward/<name>``. Shipped:

- :class:`RewardModelScore` — a trained reward model's centred score (the default; the paper's reward);
- :class:`FunctionReward` — a Python function of the prompt, the response and the prompt record's own
  fields (e.g. an ``answer`` to check), imported by dotted path;
- ``lit_rlhf.sandbox.GoldReward`` — the sandbox's gold labeler.

Write your own by subclassing :class:`Reward` and implementing ``forward(episodes) -> [B] scores``
(:class:`~lit_rlhf.episodes.Episodes`: tokens, masks, ``records``, ``prompt_texts`` and ``response_texts``).
"""

from lit_rlhf.rewards.base import Reward, RewardContext, RewardError
from lit_rlhf.rewards.function import FunctionReward
from lit_rlhf.rewards.reward_model import RewardModelScore

__all__ = ["FunctionReward", "Reward", "RewardContext", "RewardError", "RewardModelScore"]
