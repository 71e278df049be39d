"""Stage 2 — the reward model (InstructGPT section 3.5, eq. 1, appendix C.2).

The SFT transformer with its unembedding replaced by a scalar head reads a reward at the last
token of ``prompt + response``. All C(K, 2) comparisons of one prompt form one batch element:
each response is forwarded once and the loss of a prompt is the mean over its pairs of
-log sigmoid(r_w - r_l). After training, a bias is added so that the labeler demonstrations score
mean 0 (3.5), and the model is written as a Hugging Face directory carrying that bias in its
config (``reward_bias``): the reward model and the value-model initialisation of PPO.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from lit_rlhf.algorithms.ranking import ComparisonPairs, kwise_ranking_loss
from lit_rlhf.distributed.collectives import all_reduce_mean
from lit_rlhf.lora import LoraOptions
from lit_rlhf.models.heads import reward_bias, sequence_rewards, set_reward_bias
from lit_rlhf.modules.base import StageModule, cosine_optimizer
from lit_rlhf.settings import OptimizerSettings, settings

#: The reward model's optimizer defaults (InstructGPT appendix C.2).
RM_OPTIMIZER = OptimizerSettings(learning_rate=9e-6)


def pair_margins(rewards: Tensor, pairs: ComparisonPairs) -> Tensor:
    """``r_w - r_l`` for every pair: positive where the model agrees with the labeler."""
    pairs = pairs.to(rewards.device)
    return rewards[pairs.winner] - rewards[pairs.loser]


def bias_from_sums(reward_sum: Tensor, count: Tensor) -> float:
    """The bias that makes the mean reward 0: minus the mean."""
    if count.item() <= 0:
        raise ValueError("centering got no demonstrations")
    return -(reward_sum / count).item()


class RewardModule(StageModule):
    """Train a reward model on ranked comparisons with InstructGPT's K-wise loss, then center it.

    Validation reports pairwise accuracy (also on best-vs-worst and adjacent-rank pairs), mean margin and
    the reward mean/std; `lit-rlhf validate` runs it on any saved reward model. Rewards include the model's
    ``reward_bias``: that of a saved reward model when validating it, 0 during ``fit`` (the bias is computed
    after training, on the data module's ``center_on`` demonstrations, and stored in the exported config).

    Args:
        model: Initial model: an SFT output directory (its unembedding is replaced by a freshly initialised scalar
            head), a saved reward model, a hub id, a ``.gguf`` file, or a ``.json`` model config (random init).
        tokenizer: Tokenizer directory or hub id. Default: the model's own (required when ``model`` is a config).
        optimizer: AdamW and its learning-rate schedule (``OptimizerSettings``: ``learning_rate``, ``betas``,
            ``weight_decay``, ``warmup_steps``, ``warmup_start``, ``min_lr_ratio``). Default: the paper's: peak 9e-6,
            betas (0.9, 0.95), no warm-up, cosine to 10% of the peak.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        lora: Train LoRA adapters (and the scalar head in full) instead of all weights (see ``LoraOptions``).
            Unset: full fine-tuning.
        output_dir: Where the centered reward model is written as a Hugging Face directory at the end of
            ``fit``. Unset: no export.
    """

    def __init__(
        self,
        model: str,
        tokenizer: Optional[str] = None,
        optimizer: OptimizerSettings = RM_OPTIMIZER,
        gradient_checkpointing: bool = False,
        lora: Optional[LoraOptions] = None,
        output_dir: Optional[str] = None,
    ):
        super().__init__()
        self.optimizer = settings(OptimizerSettings, optimizer, RM_OPTIMIZER)
        self.save_settings_and_hyperparameters(optimizer=self.optimizer)
        self.init_stage(model, tokenizer, lora, output_dir)
        self.model = None  # built in configure_model, so strategies can shard it as it is created
        self.val_loss = MeanMetric()
        self.val_accuracy = MeanMetric()
        self.val_accuracy_best_vs_worst = MeanMetric()
        self.val_accuracy_adjacent = MeanMetric()
        self.val_margin = MeanMetric()
        self.val_reward = MeanMetric()
        self.val_reward_sq = MeanMetric()
        self._step_started = 0.0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = self.load_trained(hp.model, "scalar", gradient_checkpointing=hp.gradient_checkpointing)
        self.shard([self.model])

    def forward(self, batch: dict, centered: bool = True) -> Tensor:
        """One reward per response of the batch, ``[N]``: every response forwarded once."""
        return sequence_rewards(self.model, batch["input_ids"], batch["attention_mask"], centered=centered)

    # -- training ------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        # A loaded reward model's bias belonged to its old weights; training ends with a fresh one.
        if reward_bias(self.model):
            rank_zero_info(f"RM: dropping the loaded reward_bias {reward_bias(self.model):+.4f} before training.")
        set_reward_bias(self.model, 0.0)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        pairs: ComparisonPairs = batch["pairs"]
        rewards = self(batch, centered=False)  # the loss only sees differences; the bias is set after training
        loss = kwise_ranking_loss(rewards, pairs)
        margins = pair_margins(rewards.detach(), pairs)
        groups = pairs.num_groups
        self.log("train/loss", loss, prog_bar=True, batch_size=groups)
        self.log("train/accuracy", (margins > 0).float().mean(), batch_size=groups)
        self.log("train/margin", margins.mean(), batch_size=groups)
        self._pairs_in_step = pairs.num_pairs
        # Mean over the prompts of the whole optimizer step (all accumulated batches, all ranks).
        return self.sum_loss_for_step(loss * groups, torch.tensor(groups, device=loss.device))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_started
        self.log("train/pairs_per_sec", self._pairs_in_step / max(elapsed, 1e-9))

    def configure_optimizers(self):
        return cosine_optimizer(self.model, self.optimizer, self.trainer.estimated_stepping_batches)

    # -- validation ----------------------------------------------------------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pairs: ComparisonPairs = batch["pairs"]
        rewards = self(batch)
        margins = pair_margins(rewards, pairs)
        correct = (margins > 0).float()
        self.val_loss.update(kwise_ranking_loss(rewards, pairs), weight=pairs.num_groups)
        self.val_accuracy.update(correct)
        self.val_accuracy_best_vs_worst.update(correct[pairs.is_best_vs_worst.to(correct.device)])
        self.val_accuracy_adjacent.update(correct[pairs.is_adjacent.to(correct.device)])
        self.val_margin.update(margins)
        self.val_reward.update(rewards)
        self.val_reward_sq.update(rewards.square())

    def on_validation_epoch_end(self) -> None:
        # MeanMetric syncs across ranks in compute(); sync_dist below only averages equal values (and keeps
        # Lightning from warning about unsynced epoch-level tensors).
        metrics = {
            "val/loss": self.val_loss,
            "val/accuracy": self.val_accuracy,
            "val/accuracy_best_vs_worst": self.val_accuracy_best_vs_worst,
            "val/accuracy_adjacent": self.val_accuracy_adjacent,
            "val/margin": self.val_margin,
            "val/reward_mean": self.val_reward,
        }
        values = {name: metric.compute() for name, metric in metrics.items()}
        values["val/reward_std"] = (
            (self.val_reward_sq.compute() - values["val/reward_mean"].square()).clamp(min=0).sqrt()
        )
        for metric in (*metrics.values(), self.val_reward_sq):
            metric.reset()
        for name, value in values.items():
            self.log(name, value, prog_bar=name == "val/accuracy", sync_dist=True)

    # -- centering and export --------------------------------------------------------------------

    def predict_step(self, batch: dict, batch_idx: int = 0) -> Tensor:
        """Rewards of a batch of sequences (with the centering bias), e.g. for ``trainer.predict``."""
        return self(batch)

    def on_train_end(self) -> None:
        # Centering runs here, not in on_fit_end: the model is still on its device and sharded as in training.
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        loader = None
        if hasattr(datamodule, "center_dataloader"):
            loader = datamodule.center_dataloader(trainer.global_rank, trainer.world_size)
        if loader is None:
            rank_zero_warn(
                "RM: the data module sets no `center_on` demonstrations; the reward is not centered (reward_bias = 0)."
            )
            return
        bias = self.center_reward(loader)
        set_reward_bias(self.model, bias)
        rank_zero_info(f"RM centering: reward_bias = {bias:+.6f} (the demonstrations now score mean 0)")
        for logger in self.loggers:
            logger.log_metrics({"center/reward_bias": bias}, step=self.global_step)

    @torch.no_grad()
    def center_reward(self, loader) -> float:
        """The bias that gives the demonstrations of ``loader`` mean reward 0, over all ranks' shares.

        Every rank must call this with a loader of the same length (``center_dataloader`` pads shares);
        the forward passes go through the strategy, so sharded models gather their weights.
        """
        self.eval()
        strategy = self.trainer.strategy
        reward_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch_idx, batch in enumerate(loader):
            batch = strategy.batch_to_device(batch)
            rewards = strategy.predict_step(batch, batch_idx).double() - reward_bias(self.model)
            reward_sum += (rewards * batch["weight"].double()).sum()
            count += batch["weight"].double().sum()
        # mean over ranks of sums / mean over ranks of counts = global sum / global count
        bias = bias_from_sums(all_reduce_mean(reward_sum, self), all_reduce_mean(count, self))
        if not math.isfinite(bias):
            raise RuntimeError(f"RM centering produced a non-finite bias ({bias}); the rewards overflowed")
        return bias
