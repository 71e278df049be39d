"""The episode record: one batch of episodes (prompt + sampled response) and what is computed about them.

Engines produce an :class:`Episodes` (tokens, masks, the engine's own log-probs when it has them); PPO adds its
computed values step by step, each step returning a NEW record (:meth:`Episodes.with_values`,
``dataclasses.replace``) instead of editing the one it got; rewards, evaluation and callbacks read it.

Layout: ``[left-padded prompt | right-padded response]``, so every prompt ends at column
``prompt_length - 1`` and every response starts at ``prompt_length``; ``[B, R]`` tensors are response positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Episodes:
    """A batch of episodes. Fields below ``records`` are None until a step computes them.

    Attributes:
        input_ids: ``[B, P+R]`` prompt (left-padded) then response (right-padded).
        attention_mask: ``[B, P+R]`` 1 on prompt and response tokens.
        response_mask: ``[B, R]`` bool, response tokens up to and including the first EOS.
        ended: ``[B]`` bool, the response reached EOS within ``max_new_tokens``.
        prompt_length: ``P``.
        records: The prompt record (its fields, e.g. ``answer``) of each episode, for rewards that read them.
        tokenizer: The policy's tokenizer, for :attr:`prompt_texts` / :attr:`response_texts`. Optional.
        engine_logprobs: ``[B, R]`` log-probs the engine recorded for its tokens when its kernels are not the
            trainer's (vLLM; 0 on padding); None for an engine whose log-probs are the trainer's own.
        logprobs: ``[B, R]`` trainer log-probs at sampling time (the "old" policy of the PPO ratio).
        entropy: ``[B, R]`` policy entropy at each response position.
        ref_logprobs: ``[B, R]`` reference (SFT) log-probs of the same tokens.
        values: ``[B, R]`` value estimates of the state before each token, or None without a critic.
        component_scores: ``{name: [B]}`` each reward component's score (unweighted).
        scores: ``[B]`` the sequence score the objective uses (weighted sum of the components, minus penalties).
        kl: ``[B, R]`` per-token KL estimate to the reference.
        rewards: ``[B, R]`` per-token rewards.
        advantages: ``[B, R]`` advantages (whitened if configured, corrected for the engine if configured).
        returns: ``[B, R]`` value targets, or None without a critic.
        policy_versions: ``[B]`` long, the policy version that sampled each episode: the number of PPO updates its
            weights had had (the PPO module's rollouts done at the time; :mod:`lit_rlhf.engines.async_rollouts`).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    ended: Tensor
    prompt_length: int
    records: tuple[dict[str, Any], ...] = ()
    tokenizer: Any = field(default=None, repr=False, compare=False)
    engine_logprobs: Optional[Tensor] = None
    logprobs: Optional[Tensor] = None
    entropy: Optional[Tensor] = None
    ref_logprobs: Optional[Tensor] = None
    values: Optional[Tensor] = None
    component_scores: Mapping[str, Tensor] = field(default_factory=dict)
    scores: Optional[Tensor] = None
    kl: Optional[Tensor] = None
    rewards: Optional[Tensor] = None
    advantages: Optional[Tensor] = None
    returns: Optional[Tensor] = None
    policy_versions: Optional[Tensor] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def with_values(self, **values: Any) -> Episodes:
        """A new record with ``values`` set (this one is left as it is)."""
        return dataclasses.replace(self, **values)

    @property
    def responses(self) -> Tensor:
        """``[B, R]`` sampled token ids (padding after the first EOS)."""
        return self.input_ids[:, self.prompt_length :]

    @property
    def prompts(self) -> Tensor:
        """``[B, P]`` left-padded prompt token ids."""
        return self.input_ids[:, : self.prompt_length]

    @property
    def response_lengths(self) -> Tensor:
        """``[B]`` response tokens per episode, EOS included."""
        return self.response_mask.sum(-1)

    @cached_property
    def prompt_texts(self) -> list[str]:
        """Prompt texts (special tokens and padding removed); needs :attr:`tokenizer`."""
        mask = self.attention_mask[:, : self.prompt_length].bool()
        tokenizer = self._tokenizer()
        return [tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(self.prompts, mask)]

    @cached_property
    def response_texts(self) -> list[str]:
        """Response texts up to their first EOS (EOS and special tokens removed); needs :attr:`tokenizer`."""
        return [
            self._tokenizer().decode(row[m].tolist(), skip_special_tokens=True)
            for row, m in zip(self.responses, self.response_mask)
        ]

    def select(self, rows: Tensor) -> Episodes:
        """The episodes at ``rows`` (a minibatch or micro-batch), every per-episode field indexed alike."""
        picked: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, Tensor):
                value = value[rows]
            elif spec.name == "records" and value:
                value = tuple(value[i] for i in rows.tolist())
            elif isinstance(value, Mapping):
                value = {key: scores[rows] for key, scores in value.items()}
            picked[spec.name] = value
        return Episodes(**picked)

    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("these episodes carry no tokenizer to decode their texts with (Episodes.tokenizer)")
        return self.tokenizer


def response_mask_from_tokens(responses: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """``(mask [B, R], ended [B])``: tokens up to and including each row's first EOS, and whether it has one.

    Everything after the first EOS is padding, whatever its id (pad may equal eos).
    """
    is_eos = responses == eos_token_id
    eos_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return ~eos_before, is_eos.any(-1)


def concat_responses(prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor, eos_token_id: int) -> Episodes:
    """:class:`Episodes` (tokens only, nothing scored yet) from prompts and their sampled responses."""
    response_mask, ended = response_mask_from_tokens(responses, eos_token_id)
    return Episodes(
        input_ids=torch.cat([prompt_ids, responses], dim=1),
        attention_mask=torch.cat([prompt_mask.long(), response_mask.long()], dim=1),
        response_mask=response_mask,
        ended=ended,
        prompt_length=prompt_ids.shape[1],
    )


def pad_columns(tensors: list[Tensor], value: Any) -> Tensor:
    """Right-pad ``[b_i, R_i]`` blocks to the widest and stack their rows (generation chunks)."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


@dataclass(frozen=True, eq=False)
class RolloutSummary:
    """What one PPO rollout did: callbacks get it as ``outputs["rollout"]`` of ``on_train_batch_end``
    (:meth:`from_outputs`), instead of reading the module's attributes.

    Attributes:
        index: Rollouts done so far, this one included (1 after the first).
        episodes: The rollout's episodes with every value computed about them (``kl``, ``scores``, ``advantages``...).
        stats: Means of the update phase over its optimizer steps (``train/*``, ``ptx/*``).
        metrics: What the module logged for this rollout (``rollout/*``, ``engine/*``, ``train/*``, ``perf/*``).
        ptx_gamma: Weight of the pretraining loss in this rollout's steps (0: plain PPO).
        grad_norms_measured: Whether ``ptx/grad_norm`` and ``ptx/ppo_grad_norm`` were measured in this rollout.
    """

    index: int
    episodes: Episodes
    stats: Mapping[str, Tensor] = field(default_factory=dict)
    metrics: Mapping[str, Tensor] = field(default_factory=dict)
    ptx_gamma: float = 0.0
    grad_norms_measured: bool = False

    @staticmethod
    def from_outputs(outputs: Any) -> Optional[RolloutSummary]:
        """The summary in a ``training_step``'s outputs, or None (another module, or no rollout)."""
        summary = outputs.get("rollout") if isinstance(outputs, Mapping) else None
        return summary if isinstance(summary, RolloutSummary) else None
