"""Model FLOPs of a decoder-only transformer, for throughput and model FLOPs utilisation (MFU).

Per token, a forward pass costs about ``2 N + 2 n_layers n_ctx d_model`` FLOPs (Kaplan et al. 2020, "Scaling Laws
for Neural Language Models", section 2.1 and Table 1): two FLOPs (a multiply and an add) per weight that multiplies
the token's activations (``N``: the matmul parameters, the input embedding lookup excluded, an LM head included),
plus the attention scores against ``n_ctx`` earlier positions in each of the ``n_layers`` layers. A training step
costs three forwards: the backward pass computes gradients for both activations and weights, twice the forward's
work. MFU, as PaLM defines it (Chowdhery et al. 2022, appendix B), is the model FLOPs a phase achieves per second
over the device's peak; recomputation (activation checkpointing) does not count, so it measures useful work. PaLM's
attention term counts the attention-weighted sum of the values too (twice Kaplan's); here it is Kaplan's, and the
full context is charged to every token (no halving for the causal mask): for the short contexts of RLHF rollouts
the ``2 N`` term dominates either way.
"""

from __future__ import annotations

#: Forward passes' worth of FLOPs in one training pass (forward + backward, Kaplan et al. 2020).
TRAINING_PASSES = 3


def forward_flops_per_token(matmul_params: int, n_layers: int, d_model: int, context: float) -> float:
    """FLOPs of one token's forward pass: ``2 * matmul_params + 2 * n_layers * context * d_model``.

    Args:
        matmul_params: Parameters that multiply the token's activations (every weight but the input embedding
            table; a tied LM head counts, its matmul is done).
        n_layers: Transformer layers.
        d_model: Hidden size (the attention width of a standard transformer).
        context: Positions the token attends to (the sequence length, Kaplan's ``n_ctx``).
    """
    if matmul_params < 0 or n_layers < 0 or d_model < 0 or context < 0:
        raise ValueError(f"FLOPs need non-negative sizes, got {matmul_params=}, {n_layers=}, {d_model=}, {context=}")
    return 2.0 * matmul_params + 2.0 * n_layers * context * d_model


def training_flops_per_token(matmul_params: int, n_layers: int, d_model: int, context: float) -> float:
    """FLOPs of one token's forward and backward pass: :data:`TRAINING_PASSES` forwards (``6 N`` for large N)."""
    return TRAINING_PASSES * forward_flops_per_token(matmul_params, n_layers, d_model, context)


def flops_utilization(flops: float, seconds: float, peak_flops_per_sec: float) -> float:
    """MFU: achieved ``flops / seconds`` over the device's peak FLOP/s (a fraction, 1 = the peak)."""
    if not seconds > 0 or not peak_flops_per_sec > 0:
        raise ValueError(f"MFU needs positive time and peak, got {seconds=}, {peak_flops_per_sec=}")
    return flops / seconds / peak_flops_per_sec
