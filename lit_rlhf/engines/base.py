"""The rollout-engine interface: how PPO's responses are sampled, and how the engine learns the policy's new weights.

An engine generates from a model, prompts and :class:`SamplingSettings`; it never sees the training module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from lit_rlhf.distributed.export import full_tensors_by_layer
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import check_option
from lit_rlhf.lora import ADAPTER, is_lora, merged_state_dict


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (the same for every engine).

    Attributes:
        max_new_tokens: Longest response.
        temperature: Sampling temperature (paper 1); log-probs are taken at the same temperature; 0 = greedy.
        top_p: Nucleus sampling threshold (1 = the full distribution).
        generation_batch_size: Episodes per ``generate`` call. Default: the whole rollout at once.
        missing_eos_penalty: Subtracted from the score of responses that never reach EOS. Unset: none.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    generation_batch_size: Optional[int] = None
    missing_eos_penalty: Optional[float] = None

    def __post_init__(self) -> None:
        check_option("sampling.max_new_tokens", self.max_new_tokens, min=1, integer=True)
        check_option("sampling.temperature", self.temperature, min=0)
        check_option("sampling.top_p", self.top_p, min=0, max=1, min_open=True)
        check_option("sampling.generation_batch_size", self.generation_batch_size, min=1, integer=True)
        check_option("sampling.missing_eos_penalty", self.missing_eos_penalty, min=0)


class RolloutEngine:
    """Samples a rollout batch's responses from a policy model.

    :meth:`generate` returns :class:`~lit_rlhf.episodes.Episodes` laid out as
    ``[left-padded prompt | right-padded response]``. An engine whose log-probs are exactly the training model's
    (Hugging Face ``generate`` on the model itself) fills ``logprobs`` (and ``entropy``), so PPO needs no scoring
    forward; an engine with other kernels (vLLM) fills ``engine_logprobs`` instead, and PPO scores the tokens with
    the training model, logs the mismatch and optionally corrects for it (:mod:`lit_rlhf.engines.correction`).

    An engine that holds its own copy of the weights (``holds_own_weights``: vLLM, the HF worker) can sample the
    next rollout while the trainer updates (``batch.max_staleness: 1``, :mod:`lit_rlhf.engines.async_rollouts`);
    it then receives ``seed`` and must draw from it alone, never from the caller's global RNG.
    """

    #: Samples training rollouts from weights of its own (loaded by :meth:`sync_weights`), not from ``model``.
    holds_own_weights: bool = False

    def setup(self, policy: torch.nn.Module, source: str) -> None:
        """Called once after the policy is built (and sharded); ``source`` is the directory it was loaded from."""

    def generate(
        self,
        model: torch.nn.Module,
        prompts: dict[str, Tensor],
        num_samples: int,
        settings: SamplingSettings,
        *,
        eos_token_id: int,
        pad_token_id: int,
        training: bool = True,
        seed: Optional[int] = None,
    ) -> Episodes:
        """``num_samples`` responses per prompt (adjacent rows). ``training``: a training rollout, which an engine
        may sample from the weights it holds (loaded by :meth:`sync_weights`); False (evaluation): sample from
        ``model`` exactly as given (e.g. its EMA weights). ``seed``: seeds this call's sampling; None: draw from the
        caller's (seeded) global RNG."""
        raise NotImplementedError

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Called after each rollout's optimizer steps: load the policy's current weights into the engine."""


def plain_weights_by_layer(policy: torch.nn.Module) -> Iterator[dict[str, Tensor]]:
    """The policy's full weights under the plain Hugging Face names, one decoder layer at a time: gathered from
    FSDP2 shards layer by layer (a collective: every rank iterates to the end) and merged with LoRA adapters when
    LoRA is on. What an engine with its own weights loads in :meth:`RolloutEngine.sync_weights`."""
    config = policy.peft_config[ADAPTER] if is_lora(policy) else None
    for layer in full_tensors_by_layer(policy):
        yield merged_state_dict(layer, config) if config is not None else layer
