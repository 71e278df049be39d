"""Two worked examples of custom objectives built on :class:`~lit_rlhf.modules.ppo.PPOModule` hooks.

- :class:`FormatRewardPPOModule` changes how rewards are computed (``score_responses``).
- :class:`GroupBaselinePPOModule` changes how advantages are estimated (``estimate_advantages``)
  and drops the value model: RLOO- or GRPO-style baselines from several samples per prompt.

Both are selected from YAML like any module: ``model.class_path: lit_rlhf.modules.GroupBaselinePPOModule``.
"""

from __future__ import annotations

import re
from typing import Literal, Optional

import torch
from torch import Tensor

from lit_rlhf.algorithms import grpo_advantages, masked_sum, rloo_advantages, whiten
from lit_rlhf.errors import ConfigError
from lit_rlhf.modules.ppo import PPOModule
from lit_rlhf.modules.rollout import Rollout


class FormatRewardPPOModule(PPOModule):
    """PPO whose reward adds a hand-written term to the reward model's score.

    ``score = RM score (centred) + format_bonus * [response matches format_pattern] - length_penalty * tokens``.
    The KL penalty, GAE and the rest of PPO are unchanged.

    Args:
        format_pattern: Regular expression that the whole response text (stripped, EOS removed) must match
            (``re.fullmatch``) to earn ``format_bonus``. Unset: no format term.
        format_bonus: Added to the score of a matching response.
        length_penalty: Subtracted from the score per response token (EOS included).
        **kwargs: Everything :class:`PPOModule` takes.
    """

    def __init__(self, format_pattern: Optional[str] = None, format_bonus: float = 0.5, length_penalty: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        try:
            self.format_regex = re.compile(format_pattern) if format_pattern else None
        except re.error as e:
            raise ConfigError(f"format_pattern {format_pattern!r} is not a valid regular expression: {e}") from None

    def score_responses(self, rollout: Rollout) -> Tensor:
        scores = super().score_responses(rollout)
        return scores + self.extra_reward(rollout).to(scores)

    def extra_reward(self, rollout: Rollout) -> Tensor:
        """``[B]`` the format bonus minus the length penalty of each response."""
        extra = -self.hparams.length_penalty * rollout.response_lengths.float()
        if self.format_regex is not None:
            texts = [
                self.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True).strip()
                for ids, mask in zip(rollout.responses, rollout.response_mask)
            ]
            matches = torch.tensor([self.format_regex.fullmatch(t) is not None for t in texts], device=extra.device)
            extra = extra + self.hparams.format_bonus * matches.float()
        return extra


class GroupBaselinePPOModule(PPOModule):
    """Critic-free PPO: each response is judged against the other samples of its prompt, not a value model.

    Each prompt gets ``samples_per_prompt`` responses. A response's return is the sum of its per-token
    rewards (``score - beta * sum KL``); its advantage is that return minus the mean of the other
    samples of its prompt (``rloo``, Ahmadian et al. 2024) or standardised within the group (``grpo``,
    Shao et al. 2024), given to every token of the response. The clipped surrogate, KL penalty, ptx
    and EMA are unchanged; no value model is built, trained or checkpointed.

    Args:
        baseline: ``rloo`` (leave-one-out mean) or ``grpo`` (group mean and standard deviation).
        samples_per_prompt: Responses per prompt, at least 2.
        whiten_advantages: Also whiten the advantages over the rollout batch (off: the baseline already centres them).
        **kwargs: Everything else :class:`PPOModule` takes.
    """

    uses_value_model = False

    def __init__(self, baseline: Literal["rloo", "grpo"] = "rloo", samples_per_prompt: int = 4, whiten_advantages: bool = False, **kwargs):
        if samples_per_prompt < 2:
            raise ConfigError(f"a group baseline needs samples_per_prompt >= 2, got {samples_per_prompt}")
        super().__init__(samples_per_prompt=samples_per_prompt, whiten_advantages=whiten_advantages, **kwargs)

    def estimate_advantages(self, rollout: Rollout) -> tuple[Tensor, Optional[Tensor]]:
        mask = rollout.response_mask
        returns = masked_sum(rollout.rewards, mask, dim=1)
        group_advantages = rloo_advantages if self.hparams.baseline == "rloo" else grpo_advantages
        advantages = group_advantages(returns, self.hparams.samples_per_prompt)[:, None].expand_as(rollout.rewards)
        advantages = torch.where(mask, advantages, torch.zeros_like(advantages))
        return (whiten(advantages, mask) if self.hparams.whiten_advantages else advantages), None
