"""DPO — direct preference optimisation (Rafailov et al. 2023), the offline alternative to RM + PPO.

The policy learns from the same ranked comparisons as the reward model: every pair of a K-wise
group (ties give no pair), each response forwarded once through the policy and the frozen
reference (the SFT model, or the policy with its LoRA adapters off). The loss of a pair is
``-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))`` over the
response tokens, averaged over all pairs of the optimizer step (all accumulated batches, all ranks).
At the end of ``fit`` the policy is written as a Hugging Face directory.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lit_rlhf.algorithms import dpo_loss, logprobs_from_logits, masked_sum
from lit_rlhf.errors import check_option
from lit_rlhf.lora import LoraOptions
from lit_rlhf.models.heads import position_ids_from_mask
from lit_rlhf.models.sources import require_stage_output
from lit_rlhf.modules.base import FrozenDtype, StageModule, cosine_optimizer
from lit_rlhf.settings import OptimizerSettings, settings

#: DPO's optimizer defaults (the DPO paper's learning rate).
DPO_OPTIMIZER = OptimizerSettings(learning_rate=5e-7)


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``[N]`` summed log-probs of each sequence's response tokens (``batch["response_mask"]``) under ``model``."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids_from_mask(batch["attention_mask"]),
        use_cache=False,
    ).logits
    token_logprobs = logprobs_from_logits(logits[:, :-1], batch["input_ids"][:, 1:])
    return masked_sum(token_logprobs, batch["response_mask"][:, 1:], dim=1)


class DPOModule(StageModule):
    """Fine-tune the SFT policy directly on ranked comparisons with DPO (data: ``RewardDataModule``, like the RM).

    Args:
        policy: The SFT model directory (``configs/sft.yaml`` writes it); trained, and the reference.
        tokenizer: Tokenizer directory. Default: the policy's own.
        beta: Strength of the implicit KL constraint to the reference (DPO paper: 0.1).
        label_smoothing: Assumed probability that a comparison's label is flipped (conservative DPO), in [0, 0.5).
        optimizer: AdamW and its learning-rate schedule (``OptimizerSettings``: ``learning_rate``, ``betas``,
            ``weight_decay``, ``warmup_steps``, ``warmup_start``, ``min_lr_ratio``). Default: peak 5e-7 (the DPO
            paper's), betas (0.9, 0.95), no warm-up, cosine to 10% of the peak.
        reference_dtype: Load the frozen reference in this dtype (e.g. ``bfloat16``) to save memory.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        lora: Train LoRA adapters instead of all weights; the reference is then the policy with its adapters off.
        output_dir: Where the trained policy is written as a Hugging Face directory at the end of ``fit``.
    """

    export_attribute = "policy"
    frozen_models = ("reference_model",)

    def __init__(
        self,
        policy: str,
        tokenizer: Optional[str] = None,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        optimizer: OptimizerSettings = DPO_OPTIMIZER,
        reference_dtype: FrozenDtype = None,
        gradient_checkpointing: bool = False,
        lora: Optional[LoraOptions] = None,
        output_dir: Optional[str] = None,
    ):
        super().__init__()
        self.optimizer = settings(OptimizerSettings, optimizer, DPO_OPTIMIZER)
        self.save_settings_and_hyperparameters(optimizer=self.optimizer)
        check_option("beta", beta, min=0, min_open=True)
        check_option("label_smoothing", label_smoothing, min=0, max=0.5, max_open=True)
        require_stage_output(policy, "policy", "configs/sft.yaml")
        self.init_stage(policy, tokenizer, lora, output_dir)
        self.policy = self.reference_model = None
        self.val_metrics = torch.nn.ModuleDict({name: MeanMetric() for name in ("loss", "reward_accuracy", "margin")})

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self.policy = self.load_trained(hp.policy, gradient_checkpointing=hp.gradient_checkpointing)
        self.reference_model = self.load_reference(hp.policy, hp.reference_dtype)
        self.shard([self.policy, self.reference_model])

    def pair_losses(self, batch: dict):
        """DPO loss and implicit rewards of every pair in a batch of ranked groups."""
        policy_logps = sequence_logprobs(self.policy, batch)
        with torch.no_grad(), self.reference_view(self.reference_model, self.policy) as reference:
            reference_logps = sequence_logprobs(reference, batch)
        return dpo_loss(policy_logps, reference_logps, batch["pairs"], self.hparams.beta, self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.pair_losses(batch)
        pairs = len(out.per_pair)
        margins = out.chosen_rewards - out.rejected_rewards
        self.log("train/loss", out.per_pair.detach().mean(), prog_bar=True, batch_size=pairs)
        self.log("train/reward_accuracy", (margins > 0).float().mean(), batch_size=pairs)
        self.log("train/margin", margins.mean(), batch_size=pairs)
        return self.sum_loss_for_step(out.per_pair.sum(), torch.tensor(pairs, device=margins.device))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.pair_losses(batch)
        margins = out.chosen_rewards - out.rejected_rewards
        self.val_metrics["loss"].update(out.per_pair)
        self.val_metrics["reward_accuracy"].update((margins > 0).float())
        self.val_metrics["margin"].update(margins)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "loss", sync_dist=True)
            metric.reset()

    def configure_optimizers(self):
        return cosine_optimizer(self.policy, self.optimizer, self.trainer.estimated_stepping_batches)
