"""Rewards that know the sandbox's answers: the gold labeler as a reward component, and a verifiable exact-answer
check."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lit_rlhf.episodes import Episodes
from lit_rlhf.rewards import Reward
from lit_rlhf.sandbox.labeler import GoldLabeler, clean_response


class GoldReward(Reward):
    """The sandbox's gold labeler as a reward: partial credit in [0, 1] against the prompt record's ``answer``
    (parsed from the prompt text when the record has no ``family``/``answer`` fields).

    Optimising it directly shows what RL reaches without a learned reward model (no over-optimisation).

    Args:
        weight: Multiplies the score in the sum of reward components.
        name: Name in the logs.
    """

    def __init__(self, weight: float = 1.0, name: Optional[str] = "gold"):
        super().__init__(weight=weight, name=name)
        self.labeler = GoldLabeler()

    def forward(self, episodes: Episodes) -> Tensor:
        records = episodes.records or [{"prompt": p} for p in episodes.prompt_texts]
        return torch.tensor(
            [self.labeler.score(record, response) for record, response in zip(records, episodes.response_texts)]
        )


def exact_answer(prompt: str, response: str, record: dict) -> float:
    """A verifiable reward that reads the prompt record: 1.0 when the response is exactly its ``answer`` (no chatter),
    else 0."""
    return float(clean_response(response) == str(record["answer"]))
