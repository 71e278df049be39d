"""Per-token KL estimators and the controllers that set the KL coefficient beta.

The estimators follow Schulman's "Approximating KL Divergence" note: with tokens sampled from the
policy and ``log_ratio = logp - ref_logp``, all three estimate KL(policy || reference):

- ``k1 = log_ratio``: unbiased, high variance, can be negative per token.
- ``k2 = 0.5 * log_ratio**2``: biased, low variance, never negative.
- ``k3 = exp(-log_ratio) - 1 + log_ratio``: unbiased, low variance, never negative.

InstructGPT's reward (eq. 2) uses ``k1``: -beta * log(pi_RL / pi_SFT) per token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL estimate between the policy and the reference from the sampled tokens' log-probs.

    Args:
        logprobs: Policy log-probs of the sampled tokens, any shape.
        ref_logprobs: Reference log-probs of the same tokens, same shape.
        estimator: One of ``"k1"``, ``"k2"``, ``"k3"`` (see the module docstring).

    Returns:
        Tensor shaped like ``logprobs``.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


class FixedKLController:
    """A constant KL coefficient (InstructGPT: beta = 0.02).

    Args:
        beta: The KL coefficient.
    """

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """A KL coefficient steered towards a target KL (Ziegler et al. 2019, section 2.2).

    After each rollout: ``error = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``beta *= 1 + error * n_steps / horizon``.

    Args:
        init_beta: Starting KL coefficient.
        target: The KL (nats per sequence, or whatever unit ``update`` receives) to steer towards.
        horizon: How many steps a full 20% correction is spread over; larger is slower.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        if init_beta < 0:
            raise ValueError(f"init_beta must be >= 0, got {init_beta}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta up if the KL is above target, down if below.

        Args:
            current_kl: The KL measured on the last rollout.
            n_steps: How many steps (samples) that rollout held.
        """
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])
