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

import sys
from collections.abc import Iterable
from typing import Any, Optional

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
                    state["exp_avg_sq"] = torch.zeros_like(
                        param, dtype=torch.float32, memory_format=torch.preserve_format
                    )
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


# ----------------------------------------------------------------------------------------------
# Which precision the hardware computes natively.
#
# bfloat16 on a CPU without native bf16 arithmetic (AVX512-BF16 or AMX) is emulated and several times slower
# than float32 (issue 25 measured a 2-core AVX2 EPYC: float32 ~50 s per forward+backward of SmolLM2-135M on
# 16x192 tokens, bf16 autocast over 800 s for two steps; vLLM's bf16 generation 0.19x its fp32). ``auto`` picks
# bf16 only where it is native, and any bf16 setting that will be emulated is said once at start-up.

#: ``trainer.precision: auto`` (the lit-rlhf command and :class:`Trainer`): ``bf16-mixed`` where native, else
#: ``32-true``.
AUTO = "auto"

_warned: set[str] = set()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_native(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (default: CUDA if available, else the CPU) computes bfloat16 natively: a CUDA GPU
    that supports it (Ampere or newer), or a CPU with AVX512-BF16 or AMX-BF16."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if kind != "cpu":
        return True  # other accelerators (MPS, XLA): their own business
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    capability = torch.backends.cpu.get_cpu_capability()
    return "AMX" in capability or capability == "AVX512_BF16"


def _device_of(accelerator: Optional[str]) -> Optional[str]:
    if accelerator in ("cpu", "cuda", "gpu"):
        return "cuda" if accelerator == "gpu" else accelerator
    return None


def resolve_precision(precision: Any, accelerator: Optional[str] = None) -> Any:
    """``auto`` -> ``bf16-mixed`` where :func:`bf16_native`, else ``32-true``; any other value unchanged. A bf16
    setting that this hardware emulates is said in one line (once per process)."""
    device = _device_of(accelerator)
    if precision == AUTO:
        return "bf16-mixed" if bf16_native(device) else "32-true"
    if isinstance(precision, str) and precision.startswith("bf16") and not bf16_native(device):
        warn_emulated(f"precision {precision}")
    return precision


def warn_emulated(what: str) -> None:
    """One line: ``what`` computes in bfloat16, which this hardware emulates."""
    if what in _warned:
        return
    _warned.add(what)
    print(
        f"lit-rlhf: {what}: this {describe_hardware()} has no native bfloat16, so bf16 runs emulated and several times "
        "slower than float32; use `auto` (or 32-true / float32) here",
        file=sys.stderr,
        flush=True,
    )


def describe_hardware() -> str:
    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name()})"
    return f"CPU (torch capability {torch.backends.cpu.get_cpu_capability()})"


def _trainer_class():
    from typing import Literal, Union

    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch import Trainer as LightningTrainer

    class Trainer(LightningTrainer):
        """Lightning's Trainer whose ``precision`` also takes ``auto`` (:func:`resolve_precision`): the class the
        ``lit-rlhf`` command builds, so ``trainer.precision: auto`` works in YAML."""

        def __init__(self, *, precision: Optional[Union[_PRECISION_INPUT, Literal["auto"]]] = None, **kwargs):
            super().__init__(precision=resolve_precision(precision, kwargs.get("accelerator")), **kwargs)

    Trainer.__module__ = __name__
    return Trainer


def __getattr__(name: str):
    if name == "Trainer":  # built on first use, so importing the optimizer above does not import Lightning
        globals()["Trainer"] = _trainer_class()
        return globals()["Trainer"]
    raise AttributeError(name)


def engine_dtype(dtype: str, config: Any, on_gpu: bool) -> str:
    """A rollout engine's dtype: ``auto`` is the model directory's dtype, except that bfloat16 becomes float32 where
    the device does not compute it natively (:func:`bf16_native`); an explicit bfloat16 there is said in one line."""
    device = "cuda" if on_gpu else "cpu"
    if dtype != "auto":
        if dtype == "bfloat16" and not bf16_native(device):
            warn_emulated("engine dtype bfloat16")
        return dtype
    saved = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32").removeprefix(
        "torch."
    )
    return "float32" if saved == "bfloat16" and not bf16_native(device) else saved
