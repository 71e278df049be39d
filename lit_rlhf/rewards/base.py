"""The reward interface: what a component is built from, what it reads (:class:`~lit_rlhf.episodes.Episodes`,
which it must not change), and what it returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import UserError


class RewardError(UserError, RuntimeError):
    """A reward component failed or returned something unusable; names the component and the record."""


@dataclass(frozen=True)
class RewardContext:
    """What a reward component may use to build itself (:meth:`Reward.build`), given by the policy module.

    Attributes:
        tokenizer: The policy's tokenizer (episodes hold its token ids).
        reward_model: The module's ``reward_model`` directory, or None when unset.
        frozen_dtype: The dtype frozen models are loaded in (``bfloat16``...), or None for the directory's.
        micro_batch_size: Episodes per forward pass of the module.
    """

    tokenizer: Any
    reward_model: Optional[str] = None
    frozen_dtype: Optional[str] = None
    micro_batch_size: int = 8


class Reward(torch.nn.Module):
    """A reward component: one score per response.

    Subclasses implement :meth:`forward`; a component that needs models loads them in :meth:`build`
    (called from the module's ``configure_model``, so strategies can shard them). Component models are
    frozen and never checkpointed.

    Args:
        weight: Multiplies this component's score in the sum of all components.
        name: Name in the logs (``rollout/reward/<name>``). Default: derived from the class.
    """

    def __init__(self, weight: float = 1.0, name: Optional[str] = None):
        super().__init__()
        if not math.isfinite(weight):
            raise ValueError(f"reward weight must be finite, got {weight}")
        self.weight = weight
        self.name = name or self.default_name()

    def default_name(self) -> str:
        return type(self).__name__

    def build(self, context: RewardContext) -> list[torch.nn.Module]:
        """Load what the component needs (called from the module's ``configure_model``); return the models to
        shard. Default: nothing."""
        return []

    def uses_reward_model(self) -> bool:
        """Whether this component reads the policy module's ``reward_model`` directory
        (:attr:`RewardContext.reward_model`)."""
        return False

    def forward(self, episodes: Episodes) -> Tensor:  # pragma: no cover - abstract
        """``[B]`` scores of ``episodes`` (tokens, masks, ``records``, ``prompt_texts`` / ``response_texts``)."""
        raise NotImplementedError

    def score(self, episodes: Episodes) -> Tensor:
        """:meth:`forward`, checked: ``[B]`` finite floats, or a :class:`RewardError` naming the component and record.
        (An exception inside ``forward`` is a bug in the component and keeps its traceback.)"""
        scores = torch.as_tensor(self(episodes), dtype=torch.float32, device=episodes.input_ids.device)
        if scores.shape != (len(episodes),):
            raise RewardError(
                f"reward '{self.name}' returned shape {tuple(scores.shape)}; expected ({len(episodes)},): "
                "one score per response"
            )
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            row = bad[0]
            record = episodes.records[row] if row < len(episodes.records) else {}
            raise RewardError(
                f"reward '{self.name}' returned {scores[row].item()} for episode {row} "
                f"(record {describe_record(record)})"
            )
        return scores


def describe_record(record: dict[str, Any], limit: int = 120) -> str:
    """A short rendering of a prompt record for error messages."""
    text = repr({k: v for k, v in record.items() if not k.startswith("_")})
    return text if len(text) <= limit else text[: limit - 3] + "..."
