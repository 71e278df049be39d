"""Token log-probs, entropy and the PPO clipped losses.

Vocabulary-sized tensors are processed in blocks of at most ``max_block_elements`` elements, so
the float32 copies of bf16/fp16 logits never exist for the whole batch at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

DEFAULT_BLOCK_ELEMENTS = 2**24  # 64 MiB of float32 per block

_Index = tuple[int | slice, ...]


def _blocks(shape: tuple[int, ...], max_elements: int) -> Iterator[_Index]:
    """Basic-indexing tuples over the leading dims of ``shape`` (last dim = vocab) whose blocks hold at most
    ``max_elements``.

    Indexing with them gives views, never copies. A block is never smaller than one vocab row.
    """
    if len(shape) == 1:
        yield ()
        return
    row_elements = math.prod(shape[1:])
    if row_elements <= max_elements or len(shape) == 2:
        step = max(1, max_elements // max(row_elements, 1))
        for start in range(0, shape[0], step):
            yield (slice(start, start + step),)
        return
    for i in range(shape[0]):
        for rest in _blocks(shape[1:], max_elements):
            yield (i, *rest)


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits)[token] computed block by block in float32.

    Saves only the logits (which already exist) and the per-position log-normaliser; the backward
    recomputes the softmax block by block: d logp / d logits = onehot(token) - softmax(logits).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, max_block_elements: int) -> Tensor:  # type: ignore[override]
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        log_norm = torch.empty(logits.shape[:-1], dtype=compute_dtype, device=logits.device)
        for index in _blocks(tuple(logits.shape), max_block_elements):
            log_norm[index] = torch.logsumexp(logits[index].to(compute_dtype), dim=-1)
        token_logits = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).to(compute_dtype)
        ctx.save_for_backward(logits, tokens, log_norm)
        ctx.max_block_elements = max_block_elements
        return token_logits - log_norm

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, tokens, log_norm = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        grad_output = grad_output.to(log_norm.dtype)
        for index in _blocks(tuple(logits.shape), ctx.max_block_elements):
            block_grad = grad_output[index].unsqueeze(-1)
            probs = (logits[index].to(log_norm.dtype) - log_norm[index].unsqueeze(-1)).exp_()
            block = probs.mul_(-block_grad).scatter_add_(-1, tokens[index].unsqueeze(-1), block_grad)
            grad_logits[index] = block.to(logits.dtype)
        return grad_logits, None, None


def logprobs_from_logits(logits: Tensor, tokens: Tensor, *, max_block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> Tensor:
    """Log-probability of each token under the logits: ``log_softmax(logits)[..., token]``.

    Computed as ``logit[token] - logsumexp(logits)`` in float32, block by block, without ever
    materialising the full log-softmax (forward or backward). Differentiable once.

    Args:
        logits: ``[..., V]`` any float dtype; align them with ``tokens`` yourself (for a causal LM,
            ``logits[:, :-1]`` predict ``input_ids[:, 1:]``).
        tokens: ``[...]`` token ids.
        max_block_elements: Largest number of logits upcast at once; trades memory for kernel launches.

    Returns:
        ``[...]`` float32 log-probs (float64 for float64 logits).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not align")
    return _TokenLogProbs.apply(logits, tokens.long(), max_block_elements)


def entropy_from_logits(logits: Tensor, *, max_block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> Tensor:
    """Entropy of the softmax distribution at each position, in nats, computed in float32 block by block.

    Args:
        logits: ``[..., V]``.
        max_block_elements: Largest number of logits upcast at once.

    Returns:
        ``[...]`` float32 entropies (float64 for float64 logits).
    """
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    entropy = torch.empty(logits.shape[:-1], dtype=compute_dtype, device=logits.device)
    for index in _blocks(tuple(logits.shape), max_block_elements):
        block = logits[index].to(compute_dtype)
        probs = torch.softmax(block, dim=-1)
        entropy[index] = torch.logsumexp(block, dim=-1) - (probs * block).sum(dim=-1)
    return entropy


class TokenLoss(NamedTuple):
    """A loss per token, not yet reduced: how it is averaged over a step is the caller's choice
    (:mod:`lit_rlhf.algorithms.aggregation`), and ``metrics`` (detached, per token) are averaged the same way."""

    per_token: Tensor
    metrics: dict[str, Tensor]


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_range: float = 0.2
) -> TokenLoss:
    """PPO's clipped surrogate objective as a per-token loss.

    Per token, with ``ratio = exp(logprobs - old_logprobs)``:
    ``max(-A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range))``.

    Args:
        logprobs: ``[B, T]`` current policy log-probs of the sampled tokens (with grad).
        old_logprobs: ``[B, T]`` log-probs at sampling time.
        advantages: ``[B, T]`` advantages (no grad).
        clip_range: PPO epsilon (InstructGPT: 0.2).

    Returns:
        ``per_token`` ``[B, T]`` loss, and per-token metrics: ``clip_fraction`` (1 where the clipped term
        is the larger one: its gradient is zero there) and ``approx_kl``, the k3 estimator of
        KL(old || current), ``(ratio - 1) - log(ratio)`` (never negative).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        metrics = {
            "clip_fraction": (clipped > unclipped).to(per_token.dtype),
            "approx_kl": torch.expm1(log_ratio) - log_ratio,
        }
    return TokenLoss(per_token, metrics)


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_range: float = 0.2) -> TokenLoss:
    """PPO's clipped value loss per token: ``0.5 * max((V - R)^2, (V_clip - R)^2)``.

    ``V_clip = old_values + clip(values - old_values, -clip_range, clip_range)`` keeps one update
    from moving a value prediction far from where the rollout saw it.

    Args:
        values: ``[B, T]`` current value predictions (with grad).
        old_values: ``[B, T]`` predictions at rollout time.
        returns: ``[B, T]`` targets (e.g. from :func:`~lit_rlhf.algorithms.gae.gae_advantages`).
        clip_range: Largest allowed move of a value away from ``old_values``.

    Returns:
        ``per_token`` ``[B, T]`` loss, and the per-token metric ``value_clip_fraction``.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped_error, clipped_error)
    with torch.no_grad():
        metrics = {"value_clip_fraction": (clipped_error > unclipped_error).to(per_token.dtype)}
    return TokenLoss(per_token, metrics)
