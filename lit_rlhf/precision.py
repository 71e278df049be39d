"""AdamW for weights stored in bfloat16/float16 that keeps updates smaller than the weights' rounding step.

Why: with ``precision: bf16-true`` the trained weights themselves are bfloat16 (8 significant bits).
A weight of 0.02 has a rounding step (ulp) of about 1.2e-4, while one AdamW step at the paper's
learning rates (~1e-5) moves it by ~1e-5: less than half an ulp, so a plain ``p -= update`` rounds
back to the old value and nothing is learned, silently (issue 16 measured 2.9% of the weights
moving after 80 steps).

:class:`CompensatedAdamW` keeps, per low-precision weight, a compensation buffer of the same dtype
holding what the last rounding dropped (Kahan summation): the weight's true value is
``param + compensation``, accurate to ~16 significant bits, and every update is applied to that
value in float32 before it is rounded again. Moments are float32. Memory per low-precision weight:
2 (weight) + 2 (compensation) + 8 (moments) bytes, against 4 + 8 for float32 master weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


def is_low_precision(param: Tensor) -> bool:
    return param.dtype in LOW_PRECISION


class CompensatedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, as ``torch.optim.AdamW``) whose bfloat16/float16 weights keep every update.

    Float32 weights are updated exactly as by ``torch.optim.AdamW``; low-precision weights are
    updated through a Kahan compensation buffer (state ``compensation``), see the module docstring.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        betas: Adam's moment decays.
        eps: Added to the denominator.
        weight_decay: Decoupled weight decay.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid AdamW settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
                    if is_low_precision(param):
                        state["compensation"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                grad = param.grad.float()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = (exp_avg_sq / (1.0 - beta2**step)).sqrt_().add_(eps)
                step_size = lr / (1.0 - beta1**step)
                compensation = state.get("compensation")
                # The value being trained: float32 weights as they are, low-precision ones with what rounding dropped.
                value = param if compensation is None else param.float().add_(compensation.float())
                if weight_decay:
                    value.mul_(1.0 - lr * weight_decay)
                value.addcdiv_(exp_avg, denom, value=-step_size)
                if compensation is not None:
                    param.copy_(value)  # round to the stored dtype ...
                    compensation.copy_(value.sub_(param.float()))  # ... and keep the exact remainder (fits float32)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, but the moments stay float32: torch would cast every
        state tensor to its parameter's dtype (bfloat16), losing the precision this optimizer exists for."""
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for param_id, param in zip(ids, params):
            for key in ("exp_avg", "exp_avg_sq"):
                if key in saved.get(param_id, {}):
                    self.state[param][key] = saved[param_id][key].to(device=param.device, dtype=torch.float32)


def effective_weight(optimizer: torch.optim.Optimizer, param: Tensor) -> Tensor:
    """The value ``param`` is trained towards, in float32: ``param + compensation`` under
    :class:`CompensatedAdamW`, else ``param`` itself."""
    compensation = optimizer.state.get(param, {}).get("compensation")
    value = param.detach().float()
    return value + compensation.float() if compensation is not None else value

