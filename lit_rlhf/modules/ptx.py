"""PPO-ptx's pretraining term (InstructGPT eq. 2): ``ptx.gamma`` x next-token loss on pretraining text, in the
same optimizer step as the PPO gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_rlhf.algorithms.lm import IGNORE_INDEX, next_token_loss
from lit_rlhf.modules.rollout import grad_norm, select_rows
from lit_rlhf.reliability.guards import check_finite


def lm_loss(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Next-token loss of ``model`` on a right-padded text batch: (mean over tokens, token count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return next_token_loss(logits, batch["labels"])


def ptx_backward(
    policy: torch.nn.Module,
    ptx: dict[str, Tensor],
    params: list[Tensor],
    *,
    gamma: float,
    micro_batch_size: int,
    backward: Callable[[Tensor], None],
    mean_over_ranks: Callable[[Tensor], Tensor],
    where: str,
    measure_grad_norms: bool = False,
) -> dict[str, Tensor]:
    """Backpropagate ``gamma`` x the next-token loss of one step's pretraining batch into the gradients the PPO loss
    left (one optimizer step for both, as in the paper), normalised by the step's ptx token count over all ranks
    (``mean_over_ranks``; ``backward`` is the module's ``manual_backward``). With ``measure_grad_norms`` the PPO
    gradients are set aside meanwhile, so both norms are measured separately (``ptx/ppo_grad_norm``,
    ``ptx/grad_norm``; it costs a copy of the gradients)."""
    set_aside = [p.grad for p in params] if measure_grad_norms else None
    stats = {}
    if set_aside is not None:
        stats["ptx/ppo_grad_norm"] = grad_norm(params)
        for p in params:
            p.grad = None
    local = (ptx["labels"][:, 1:] != IGNORE_INDEX).sum().to(torch.float64)
    normalizer = mean_over_ranks(local).clamp(min=1)  # gradients are averaged over ranks: count per rank
    loss_sum = torch.zeros((), device=local.device)
    for rows in torch.arange(len(ptx["input_ids"])).split(micro_batch_size):
        loss, n_tokens = lm_loss(policy, select_rows(ptx, rows))
        check_finite("the ptx loss", loss, where)
        backward(gamma * loss * (n_tokens / normalizer).to(loss.dtype))
        loss_sum += loss.detach() * n_tokens
    if set_aside is not None:
        stats["ptx/grad_norm"] = grad_norm(params)
        for p, grad in zip(params, set_aside):
            p.grad = grad if p.grad is None else (p.grad if grad is None else p.grad.add_(grad))
    stats.update({"ptx/loss": loss_sum / local.clamp(min=1), "tokens": ptx["attention_mask"].sum()})
    return stats
