"""Token log-probs, entropy and PPO's clipped losses."""

import math

import pytest
import torch

from lit_rlhf.algorithms import (
    aggregate_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    logprobs_from_logits,
    step_normalizer,
)

# --- log-probs and entropy -----------------------------------------------------------------------


def test_logprobs_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    logprobs = logprobs_from_logits(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(logprobs, torch.tensor([math.log(0.75), math.log(0.25)]))


@pytest.mark.parametrize("max_block_elements", [5, 14, 2**24])  # one row / two rows / whole tensor per block
def test_logprobs_match_log_softmax_on_a_non_contiguous_slice(max_block_elements):
    generator = torch.Generator().manual_seed(0)
    full = torch.randn(2, 4, 7, generator=generator, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3), generator=generator)
    logits = full[:, :-1]  # the usual causal-LM shift: not contiguous
    got = logprobs_from_logits(logits, tokens, max_block_elements=max_block_elements)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, expected)
    weights = torch.randn(2, 3, generator=generator)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), full)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), full)
    torch.testing.assert_close(got_grad, expected_grad)


def test_logprobs_gradcheck_in_float64():
    logits = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([[0, 4], [2, 2], [1, 3]])
    assert torch.autograd.gradcheck(lambda x: logprobs_from_logits(x, tokens, max_block_elements=6), (logits,))


def test_bf16_logits_give_float32_logprobs_and_bf16_grads():
    logits = torch.randn(4, 11).to(torch.bfloat16).requires_grad_()
    tokens = torch.tensor([0, 3, 7, 10])
    got = logprobs_from_logits(logits, tokens, max_block_elements=11)
    assert got.dtype == torch.float32
    expected = torch.log_softmax(logits.detach().float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_logprobs_reject_misaligned_tokens():
    with pytest.raises(ValueError, match="do not align"):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]])
    expected = [math.log(4.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    torch.testing.assert_close(entropy_from_logits(logits, max_block_elements=4), torch.tensor(expected))


# --- clipped policy loss -------------------------------------------------------------------------

# Per token (clip 0.2): A=+1, r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped)
#                       A=+1, r=0.5 -> max(-0.5, -0.8) = -0.5
#                       A=-1, r=1.5 -> max( 1.5,  1.2) =  1.5
#                       A=-1, r=0.5 -> max( 0.5,  0.8) =  0.8 (clipped)
# The fifth token is padding with junk values.
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
RATIOS = torch.tensor([[1.5, 0.5, 1.5, 0.5, 50.0]])
MASK = torch.tensor([[1, 1, 1, 1, 0]])


def token_mean(out, mask):
    """The loss and metrics as PPOModule aggregates one micro-batch that is the whole step (token mean)."""
    normalizer = step_normalizer(mask, "token_mean")
    loss = aggregate_loss(out.per_token, mask, "token_mean", normalizer)
    return loss, {k: aggregate_loss(v, mask, "token_mean", normalizer) for k, v in out.metrics.items()}


def test_policy_loss_clips_for_positive_and_negative_advantages():
    old = torch.full((1, 5), -2.0)
    logprobs = (old + RATIOS.log()).requires_grad_()
    out = clipped_policy_loss(logprobs, old, ADVANTAGES, clip_range=0.2)
    loss, metrics = token_mean(out, MASK)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)  # 0.15; the masked token never counts
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    # clipped tokens get no gradient; the others get d(-A*r)/dlogp = -A*r, over 4 tokens
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 1.5 / 4, 0.0, 0.0]]))
    assert not any(v.requires_grad for v in out.metrics.values())


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0]])
    out = clipped_policy_loss(logprobs, logprobs.clone(), ADVANTAGES * torch.tensor([[3.0, 1, 1, 2, 1]]))
    loss, metrics = token_mean(out, MASK)
    assert loss.item() == pytest.approx(-(3.0 + 1.0 - 1.0 - 2.0) / 4)
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["approx_kl"].item() == 0.0


def test_policy_loss_approx_kl_is_k3():
    # log ratio ln 2 on every token: (2 - 1) - ln 2
    out = clipped_policy_loss(torch.full((2, 2), math.log(2.0)), torch.zeros(2, 2), torch.ones(2, 2))
    assert token_mean(out, torch.ones(2, 2))[1]["approx_kl"].item() == pytest.approx(1.0 - math.log(2.0))


# --- clipped value loss --------------------------------------------------------------------------


def test_value_loss_clipping_cases():
    # old values 0, returns 1, clip 0.2:
    #   V=0.5  -> clipped 0.2:  max(0.25, 0.64) = 0.64 (clipped)
    #   V=0.1  -> inside range: max(0.81, 0.81) = 0.81
    #   V=-0.5 -> clipped -0.2: max(2.25, 1.44) = 2.25
    # fourth token is padding
    values = torch.tensor([[0.5, 0.1, -0.5, 7.0]], requires_grad=True)
    out = clipped_value_loss(values, torch.zeros(1, 4), torch.ones(1, 4), clip_range=0.2)
    loss, metrics = token_mean(out, torch.tensor([[1, 1, 1, 0]]))
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    assert metrics["value_clip_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dV 0.5*(V-1)^2 / 3 = (V-1)/3 where unclipped; 0 where the clipped term won or outside the mask
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.9 / 3, -1.5 / 3, 0.0]]))


def test_value_loss_without_movement_is_half_mse():
    values = torch.tensor([[1.0, 3.0]])
    out = clipped_value_loss(values, values.clone(), torch.tensor([[0.0, 1.0]]))
    loss, metrics = token_mean(out, torch.ones(1, 2))
    assert loss.item() == pytest.approx(0.5 * (1.0 + 4.0) / 2)
    assert metrics["value_clip_fraction"].item() == 0.0
