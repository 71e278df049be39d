"""The reward interface: what a component receives about the episodes, and what it returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

import torch
from torch import Tensor

from lit_rlhf.errors import UserError


class RewardError(UserError, RuntimeError):
    """A reward component failed or returned something unusable; names the component and the record."""


@dataclass
class RewardBatch:
    """Episodes to score: token layout of the rollout, their texts, and the prompt records' own fields.

    Attributes:
        input_ids: ``[B, P+R]`` left-padded prompt then right-padded response (the policy's token ids).
        attention_mask: ``[B, P+R]``.
        prompt_length: ``P``.
        response_mask: ``[B, R]`` response tokens up to and including the first EOS.
        ended: ``[B]`` whether each response reached EOS.
        records: One dict per episode: the fields of the record its prompt came from (e.g. ``answer``).
        tokenizer: The policy's tokenizer (``prompts`` / ``responses`` decode with it).
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_length: int
    response_mask: Tensor
    ended: Tensor
    records: list[dict[str, Any]] = field(default_factory=list)
    tokenizer: Any = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @cached_property
    def prompts(self) -> list[str]:
        """Prompt texts (special tokens and padding removed)."""
        ids = self.input_ids[:, : self.prompt_length]
        mask = self.attention_mask[:, : self.prompt_length].bool()
        return [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(ids, mask)]

    @cached_property
    def responses(self) -> list[str]:
        """Response texts up to their first EOS (EOS and special tokens removed)."""
        ids = self.input_ids[:, self.prompt_length :]
        return [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(ids, self.response_mask)]


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

    def build(self, module) -> list[torch.nn.Module]:
        """Load what the component needs, given the policy module (its hparams and tokenizer); return the
        models to shard. Default: nothing."""
        return []

    def uses_reward_model(self) -> bool:
        """Whether this component reads the policy module's ``reward_model`` directory."""
        return False

    def forward(self, batch: RewardBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, batch: RewardBatch) -> Tensor:
        """:meth:`forward`, checked: ``[B]`` finite floats, or a :class:`RewardError` naming the component and record.
        (An exception inside ``forward`` is a bug in the component and keeps its traceback.)"""
        scores = torch.as_tensor(self(batch), dtype=torch.float32, device=batch.input_ids.device)
        if scores.shape != (len(batch),):
            raise RewardError(f"reward '{self.name}' returned shape {tuple(scores.shape)}; expected ({len(batch)},): one score per response")
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            row = bad[0]
            record = batch.records[row] if row < len(batch.records) else {}
            raise RewardError(f"reward '{self.name}' returned {scores[row].item()} for episode {row} (record {describe_record(record)})")
        return scores


def describe_record(record: dict[str, Any], limit: int = 120) -> str:
    """A short rendering of a prompt record for error messages."""
    text = repr({k: v for k, v in record.items() if not k.startswith("_")})
    return text if len(text) <= limit else text[: limit - 3] + "..."
