"""Reductions over the valid entries of a padded tensor.

A ``mask`` is a bool or 0/1 tensor of the same shape as the data; ``True``/``1`` marks an entry
that counts. Entries outside the mask never influence a result, even when they hold NaN or inf
(they are selected away, not multiplied by zero).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_bool(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match data shape {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of the entries of ``x`` where ``mask`` is set, over ``dim`` (all dims if ``None``)."""
    selected = torch.where(_as_bool(mask, x), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of the entries of ``x`` where ``mask`` is set, over ``dim`` (all dims if ``None``).

    An empty selection gives 0 rather than NaN, so an all-padding slice adds nothing to a loss
    (and costs no device-to-host sync to check).
    """
    bool_mask = _as_bool(mask, x)
    count = bool_mask.sum() if dim is None else bool_mask.sum(dim)
    return masked_sum(x, bool_mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the entries of ``x`` where ``mask`` is set (a scalar).

    Args:
        x: Data.
        mask: Bool or 0/1 tensor shaped like ``x``.
        unbiased: Divide by ``n - 1`` (Bessel's correction) instead of ``n``; as with
            ``torch.var``, one selected entry then gives NaN.
    """
    bool_mask = _as_bool(mask, x)
    mean = masked_mean(x, bool_mask)
    sum_sq = masked_sum((x - mean) ** 2, bool_mask)
    count = bool_mask.sum().to(x.dtype)
    return sum_sq / (count - 1) if unbiased else sum_sq / count.clamp(min=1)


def whiten(
    x: Tensor,
    mask: Tensor | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
    moments: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Normalise the masked entries of ``x`` to unit variance (and zero mean).

    Uses the biased variance, so a single selected entry whitens to 0 instead of NaN.

    Args:
        x: Data, e.g. advantages ``[B, T]``.
        mask: Bool or 0/1 tensor shaped like ``x``; ``None`` selects everything.
        shift_mean: If ``False``, add the mean back after scaling (only the spread is normalised).
        eps: Added to the variance before the square root.
        moments: ``(mean, biased variance)`` to use instead of those of ``x`` (e.g. over all ranks' data).

    Returns:
        Tensor shaped like ``x``; entries outside the mask are 0.
    """
    bool_mask = torch.ones_like(x, dtype=torch.bool) if mask is None else _as_bool(mask, x)
    mean, var = (
        moments if moments is not None else (masked_mean(x, bool_mask), masked_var(x, bool_mask, unbiased=False))
    )
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(bool_mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the variance of ``returns`` the value predictions explain: 1 - Var[R - V] / Var[R].

    1 is a perfect critic, 0 is no better than predicting the mean, negative is worse than that.
    NaN when the returns have no variance (the ratio is undefined).
    """
    bool_mask = _as_bool(mask, returns)
    var_returns = masked_var(returns, bool_mask, unbiased=False)
    var_error = masked_var(returns - values, bool_mask, unbiased=False)
    ratio = 1 - var_error / var_returns
    return torch.where(var_returns > 0, ratio, torch.full_like(ratio, float("nan")))
