"""The paper's reward: a trained reward model's centred score at the last response token."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from lit_rlhf.episodes import Episodes
from lit_rlhf.models.heads import reward_bias, sequence_rewards
from lit_rlhf.models.loading import check_same_tokenizer, load_scalar_model
from lit_rlhf.models.sources import require_stage_output
from lit_rlhf.rewards.base import Reward, RewardContext


class RewardModelScore(Reward):
    """``r(x, y)`` of a reward model plus its centering bias (InstructGPT 3.5), read at the last response token.

    The reward model reads the policy's token ids as they are, so it must share the policy's tokenizer
    (checked when the model is built).

    Args:
        model: Reward model directory. Default: the policy module's ``reward_model``.
        dtype: Load it in this dtype (e.g. ``bfloat16``) to save memory. Default: the module's ``frozen_dtype``.
        chunk_size: Episodes per forward pass. Default: the module's ``micro_batch_size``.
        weight: Multiplies the score in the sum of reward components.
        name: Name in the logs.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None,
        chunk_size: Optional[int] = None,
        weight: float = 1.0,
        name: Optional[str] = "reward_model",
    ):
        super().__init__(weight=weight, name=name)
        self.source, self.dtype, self.chunk_size = model, dtype, chunk_size
        self.reward_model = None

    @classmethod
    def loaded(
        cls, reward_model: torch.nn.Module, *, chunk_size: int = 64, name: str = "reward_model"
    ) -> RewardModelScore:
        """The component around an already-loaded (frozen) reward model, needing no :meth:`build`."""
        component = cls(chunk_size=chunk_size, name=name)
        component.reward_model = reward_model
        return component

    def uses_reward_model(self) -> bool:
        return self.source is None

    def build(self, context: RewardContext) -> list[torch.nn.Module]:
        source = self.source or context.reward_model
        require_stage_output(source, "reward_model", "configs/rm.yaml")
        check_same_tokenizer(context.tokenizer, source, "reward_model")
        dtype = self.dtype or context.frozen_dtype
        self.reward_model = load_scalar_model(source, dtype=getattr(torch, dtype) if dtype else None, trainable=False)
        self.chunk_size = self.chunk_size or context.micro_batch_size
        return [self.reward_model]

    def forward(self, episodes: Episodes) -> Tensor:
        scores = [
            sequence_rewards(self.reward_model, ids, mask, centered=False)
            for ids, mask in zip(
                episodes.input_ids.split(self.chunk_size), episodes.attention_mask.split(self.chunk_size)
            )
        ]
        return torch.cat(scores).float() + reward_bias(self.reward_model)
