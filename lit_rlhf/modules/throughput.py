"""Tokens/s, FLOP/s and model FLOPs utilisation of PPO's three phases (``perf/*``), one set per rollout.

- **generation**: the response tokens sampled, each a forward of the policy at the episode's length.
- **scoring**: the episodes' tokens (prompt + response), each a forward of every scoring model: the reference,
  the reward models, the value model (with a critic) and the policy (unless the engine recorded its log-probs).
- **update**: the tokens through the optimizer steps (every PPO epoch's episodes and the pretraining text), each a
  training pass (3 forwards) of the policy, and of the value model for the episodes' tokens.

FLOPs are model FLOPs (:mod:`lit_rlhf.algorithms.flops`): an upper estimate where only the response positions go
through the LM head, and pretraining text is charged the episodes' mean length. MFU is logged where the device's
peak is known (:mod:`lit_rlhf.distributed.peak_flops`); on a CPU only the achieved FLOP/s. Every rank measures
its own share; rank 0's is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from lit_rlhf.algorithms.flops import flops_utilization, forward_flops_per_token, training_flops_per_token
from lit_rlhf.distributed.peak_flops import device_peak_flops
from lit_rlhf.episodes import Episodes


@dataclass(frozen=True)
class ModelShape:
    """What a transformer's FLOPs per token depend on (:func:`~lit_rlhf.algorithms.flops.forward_flops_per_token`)."""

    matmul_params: int
    n_layers: int
    d_model: int

    @staticmethod
    def of(model: torch.nn.Module) -> Optional[ModelShape]:
        """The shape of a Hugging Face transformer (LM or scalar head); None for a model without its config."""
        config = getattr(model, "config", None)
        n_layers, d_model = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
        if n_layers is None or d_model is None or not hasattr(model, "get_input_embeddings"):
            return None
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied = head is not None and head.weight is embedding  # the lookup is free, the tied head's matmul is not
        total = sum(p.numel() for p in model.parameters())
        return ModelShape(total - (0 if tied else embedding.numel()), n_layers, d_model)

    def flops(self, tokens: float, context: float, training: bool = False) -> float:
        per_token = training_flops_per_token if training else forward_flops_per_token
        return tokens * per_token(self.matmul_params, self.n_layers, self.d_model, context)


class PhaseThroughput:
    """The ``perf/<phase>_*`` metrics of :class:`~lit_rlhf.modules.ppo.PPOModule`'s phases, from the shapes of its
    models (read once, when they are loaded)."""

    def __init__(self, policy: torch.nn.Module, value_model: Optional[torch.nn.Module], scorers: list[torch.nn.Module]):
        self.policy = ModelShape.of(policy)
        self.value = ModelShape.of(value_model) if value_model is not None else None
        self.critic = value_model is not None
        self.scorers = [ModelShape.of(model) for model in scorers]

    def generation(self, episodes: Episodes, seconds: float, device: torch.device) -> dict[str, Tensor]:
        tokens = float(episodes.response_lengths.sum())
        flops = self._flops([(self.policy, tokens)], episodes, training=False)
        return phase_metrics("generation", tokens, seconds, flops, device_peak_flops(device))

    def scoring(
        self, episodes: Episodes, seconds: float, device: torch.device, policy_scored: bool
    ) -> dict[str, Tensor]:
        tokens = float(episodes.attention_mask.sum())
        models = self.scorers + ([self.value] if self.critic else []) + ([self.policy] if policy_scored else [])
        flops = self._flops([(shape, tokens) for shape in models], episodes, training=False)
        return phase_metrics("scoring", tokens, seconds, flops, device_peak_flops(device))

    def update(
        self, episodes: Episodes, tokens: float, epochs: int, seconds: float, device: torch.device
    ) -> dict[str, Tensor]:
        """``tokens``: all the update's tokens (episodes over its ``epochs``, and pretraining text)."""
        episode_tokens = float(episodes.attention_mask.sum()) * epochs
        work = [(self.policy, tokens)] + ([(self.value, episode_tokens)] if self.critic else [])
        return phase_metrics("update", tokens, seconds, self._flops(work, episodes, True), device_peak_flops(device))

    @staticmethod
    def _flops(work: list[tuple[Optional[ModelShape], float]], episodes: Episodes, training: bool) -> Optional[float]:
        """Total FLOPs of ``(model, tokens)`` pairs at the episodes' mean length; None if a model's shape is unknown."""
        if any(shape is None for shape, _ in work):
            return None
        context = float(episodes.attention_mask.sum(dim=1).float().mean())
        return sum(shape.flops(tokens, context, training) for shape, tokens in work)


def phase_metrics(
    phase: str, tokens: float, seconds: float, flops: Optional[float], peak_flops_per_sec: Optional[float]
) -> dict[str, Tensor]:
    """``perf/<phase>_tokens_per_sec``, ``perf/<phase>_flops_per_sec`` (when ``flops`` is known) and
    ``perf/<phase>_mfu`` (when the device's peak is known too)."""
    seconds = max(seconds, 1e-9)
    metrics = {f"perf/{phase}_tokens_per_sec": torch.tensor(tokens / seconds)}
    if flops is not None:
        metrics[f"perf/{phase}_flops_per_sec"] = torch.tensor(flops / seconds)
        if peak_flops_per_sec:
            metrics[f"perf/{phase}_mfu"] = torch.tensor(flops_utilization(flops, seconds, peak_flops_per_sec))
    return metrics
