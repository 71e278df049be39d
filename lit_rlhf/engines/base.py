"""The rollout-engine interface: how PPO's responses are sampled, and how the engine learns the policy's new weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (the same for every engine)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    eos_token_id: int
    pad_token_id: int
    batch_size: Optional[int] = None  # prompts x samples per generate call; None: all at once


class RolloutEngine:
    """Samples a rollout batch's responses for a policy module.

    An engine returns a :class:`~lit_rlhf.modules.rollout.Rollout` laid out as
    ``[left-padded prompt | right-padded response]`` with the sampled tokens' log-probs when it has them:
    ``trainer_logprobs=True`` when those are exactly the training model's (then PPO's ratio uses them and no
    scoring forward is needed); an engine with other kernels (vLLM) sets it False and PPO scores the tokens
    with the training model itself.
    """

    #: Whether the log-probs an engine records are the training model's own (no scoring forward needed).
    trainer_logprobs: bool = True
    #: An engine with ``trainer_logprobs=False`` leaves its own ``[B, R]`` log-probs of the last rollout's tokens
    #: here (0 on padding); PPO takes them once to log the engine-trainer mismatch and for truncated IS.
    sampled_logprobs: Optional[Tensor] = None

    def setup(self, module) -> None:
        """Called once from the module's ``configure_model`` after its models are built (and sharded)."""

    def generate(self, module, model, prompts: dict[str, Tensor], num_samples: int, settings: SamplingSettings):
        """``num_samples`` responses per prompt (adjacent rows) as a Rollout."""
        raise NotImplementedError

    def sync_weights(self, module) -> None:
        """Called after each rollout's optimizer steps: load the policy's current weights into the engine."""
