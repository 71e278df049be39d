"""Scalar heads (reward and value models) and positions: lit-rlhf reads a sequence's score at its last
non-padding token itself (HF's own pooling looks for the pad id, which is wrong when pad == eos), and adds the
reward model's centering bias stored in its config."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from lit_rlhf.models.adapters import unwrap

#: Config attribute that carries the reward model's centering bias.
REWARD_BIAS_KEY = "reward_bias"


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that start at 0 on the first real token, for left- and right-padded rows alike."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-padding token of each row (left or right padding)."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(-1).values


def scalar_head_name(model: PreTrainedModel) -> str:
    """Attribute name of the scalar head of a sequence-classification model (``score`` on decoder-only models)."""
    model = unwrap(model)
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise TypeError(
        f"{type(model).__name__} has no scalar head named 'score' or 'classifier'; lit-rlhf cannot use it as a "
        "reward/value model."
    )


def scalar_head(model: PreTrainedModel) -> torch.nn.Module:
    """The scalar head of a sequence-classification model (``score`` on decoder-only models)."""
    return getattr(unwrap(model), scalar_head_name(model))


def token_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The scalar head applied at every position: values [B, T] for PPO's value model."""
    model = unwrap(model)  # a LoRA model's adapters live in the wrapped model's own layers
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return scalar_head(model)(hidden).squeeze(-1).float()


def reward_bias(model: PreTrainedModel) -> float:
    return float(getattr(unwrap(model).config, REWARD_BIAS_KEY, 0.0))


def set_reward_bias(model: PreTrainedModel, bias: float) -> None:
    setattr(unwrap(model).config, REWARD_BIAS_KEY, float(bias))


def sequence_rewards(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, *, centered: bool = True
) -> Tensor:
    """Reward [B] read at the last non-padding token, plus the centering bias when ``centered``."""
    scores = token_scores(model, input_ids, attention_mask)
    rewards = scores.gather(-1, last_token_index(attention_mask).unsqueeze(-1)).squeeze(-1)
    return rewards + reward_bias(model) if centered else rewards
