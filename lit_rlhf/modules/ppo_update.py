"""PPOModule's optimisation phase (:class:`PPOUpdate`, mixed into :class:`~lit_rlhf.modules.ppo.PPOModule`): the
minibatch loop over a rollout's episodes, one optimizer step per minibatch with its share of pretraining text.

Each minibatch's losses are normalised by one number for the whole step, summed over its micro-batches and
all-reduced over ranks before the first backward, so the step's gradient does not depend on
``batch.micro_batch_size`` or on how episodes fall on ranks. The per-token losses come from the module's
``policy_loss`` and ``value_loss`` hooks.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lit_rlhf.algorithms import aggregate_loss, entropy_from_logits, logprobs_from_logits, step_normalizer
from lit_rlhf.distributed.collectives import all_reduce_mean, sync_gradients
from lit_rlhf.episodes import Episodes
from lit_rlhf.modules.ptx import ptx_backward
from lit_rlhf.modules.rollout import accumulate, response_logits, response_values, select_rows
from lit_rlhf.reliability.guards import check_finite


class PPOUpdate:
    """The update phase of :class:`~lit_rlhf.modules.ppo.PPOModule` (its settings groups, models and hooks)."""

    def ppo_update(
        self,
        episodes: Episodes,
        ptx: Optional[dict[str, Tensor]],
        where: str = "update",
        *,
        measure_grad_norms: bool = False,
    ) -> dict[str, Tensor]:
        """``batch.ppo_epochs`` x minibatches, one optimizer step each, with its ptx batch; the means of the phase's
        metrics over its steps (``train/*``, ``ptx/*``) and ``tokens`` (how many it processed)."""
        b, optimizer = self.batch, self.optimizers()
        params = [p for group_ in optimizer.param_groups for p in group_["params"]]
        steps_per_epoch = math.ceil(len(episodes) / b.minibatch_size)
        ptx_rows = torch.arange(len(ptx["input_ids"])).tensor_split(steps_per_epoch) if ptx else []
        ptx_steps = [select_rows(ptx, rows) for rows in ptx_rows]
        generator = torch.Generator().manual_seed(self._rollout_seed())
        totals: dict[str, Tensor] = {}
        tokens, step_weight = torch.zeros((), device=self.device), 1 / (steps_per_epoch * b.ppo_epochs)
        for _ in range(b.ppo_epochs):
            order = torch.randperm(len(episodes), generator=generator).to(self.device)
            for step, minibatch in enumerate(order.split(b.minibatch_size)):
                optimizer.zero_grad()
                micro_rows = minibatch.split(b.micro_batch_size)
                local = sum(
                    step_normalizer(episodes.loss_mask[rows], self.loss.aggregation, self.sampling.max_new_tokens)
                    for rows in micro_rows
                )
                normalizer = all_reduce_mean(local, self)  # gradients are averaged over ranks: the mean count per rank
                for rows in micro_rows:
                    micro = episodes.select(rows)
                    loss, stats = self.ppo_loss(micro, normalizer)
                    check_finite("the PPO loss", loss, where)
                    self.manual_backward(loss)
                    accumulate(totals, stats, step_weight)
                    tokens += micro.attention_mask.sum()
                if ptx_steps and len(ptx_steps[step]["input_ids"]):
                    ptx_stats = ptx_backward(
                        self.policy,
                        ptx_steps[step],
                        params,
                        gamma=self.ptx.gamma,
                        where=where,
                        micro_batch_size=self.ptx.micro_batch_size or b.micro_batch_size,
                        backward=self.manual_backward,
                        mean_over_ranks=lambda value: all_reduce_mean(value, self),
                        measure_grad_norms=measure_grad_norms,
                    )
                    tokens += ptx_stats.pop("tokens")
                    accumulate(totals, ptx_stats, step_weight)
                sync_gradients(self, params)
                norm = torch.nn.utils.clip_grad_norm_(params, self.loss.max_grad_norm or math.inf)
                check_finite("the gradient norm", norm, where)
                accumulate(totals, {"train/grad_norm": norm}, step_weight)
                optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.policy)
        totals["train/lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        totals["tokens"] = tokens
        return totals

    def ppo_loss(self, micro: Episodes, normalizer: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """This micro-batch's share of the step loss: policy loss plus ``value.loss_coef`` x value loss, each summed
        over the micro-batch and divided by the step's ``normalizer``; and its detached parts."""
        logits = response_logits(self.policy, micro, self.sampling.temperature)
        logprobs = logprobs_from_logits(logits, micro.responses)
        entropy = entropy_from_logits(logits) if self.loss.entropy_coef else None  # from the same forward, with grad
        parts = {"policy": self.policy_loss(micro, logprobs, entropy)}
        if self.value_model is not None:
            parts["value"] = self.value_loss(micro, response_values(self.value_model, micro))
        mask, mode = micro.loss_mask, self.loss.aggregation  # less what a rollout correction masked
        loss, stats = 0.0, {}
        for name, part in parts.items():
            part_loss = aggregate_loss(part.per_token, mask, mode, normalizer)
            loss = loss + (self.value.loss_coef * part_loss if name == "value" else part_loss)
            stats[f"train/{name}_loss"] = part_loss.detach()
            stats.update(
                {f"train/{key}": aggregate_loss(value, mask, mode, normalizer) for key, value in part.metrics.items()}
            )
        return loss, stats
