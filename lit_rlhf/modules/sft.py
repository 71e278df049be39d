"""Stage 1 — supervised fine-tuning (InstructGPT section 3.5, appendix C.1).

Next-token loss on demonstrations (response tokens only) or on plain text, AdamW with
betas (0.9, 0.95), cosine decay to 10% of the peak LR with no warm-up. At the end of ``fit`` the
model is written as a Hugging Face directory: the input of the RM and PPO stages.
"""

from __future__ import annotations

import time
from typing import Literal, Optional

import torch
from torchmetrics import MeanMetric

from lit_rlhf.algorithms.lm import labelled_positions, next_token_loss
from lit_rlhf.errors import check_option
from lit_rlhf.lora import LoraOptions
from lit_rlhf.modules.base import StageModule, cosine_optimizer
from lit_rlhf.settings import OptimizerSettings, settings

#: SFT's optimizer defaults (InstructGPT appendix C.1).
SFT_OPTIMIZER = OptimizerSettings(learning_rate=9.65e-6)


class SFTModule(StageModule):
    """Fine-tune a causal LM on demonstrations.

    Args:
        model: Pretrained model: a directory written by ``save_pretrained``, a hub id, a ``.gguf`` file, or
            a ``.json`` model config for a randomly initialised model.
        tokenizer: Tokenizer directory or hub id. Default: the model's own (required when ``model`` is a config).
        optimizer: AdamW and its learning-rate schedule (``OptimizerSettings``: ``learning_rate``, ``betas``,
            ``weight_decay``, ``warmup_steps``, ``warmup_start``, ``min_lr_ratio``). Default: the paper's: peak
            9.65e-6 (its 1.3B and 6B models), betas (0.9, 0.95), no warm-up, cosine to 10% of the peak.
        dropout: Residual dropout written into the model config (paper: 0.2). Unset keeps the model's own; an
            architecture without a residual-dropout field (e.g. Llama) raises instead of ignoring it.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        lora: Train LoRA adapters instead of all weights (see ``LoraOptions``; ``export`` picks merged or
            adapter-only output). Unset: full fine-tuning.
        output_dir: Where the Hugging Face directory is written at the end of ``fit``. Unset: no export.
        export_checkpoint: ``last`` exports the final weights; ``best`` the best checkpoint of the
            trainer's ModelCheckpoint (its ``monitor`` decides what best means; the paper picks SFT
            models by RM score).
    """

    def __init__(
        self,
        model: str,
        tokenizer: Optional[str] = None,
        optimizer: OptimizerSettings = SFT_OPTIMIZER,
        dropout: Optional[float] = None,
        gradient_checkpointing: bool = False,
        lora: Optional[LoraOptions] = None,
        output_dir: Optional[str] = None,
        export_checkpoint: Literal["last", "best"] = "last",
    ):
        super().__init__()
        self.optimizer = settings(OptimizerSettings, optimizer, SFT_OPTIMIZER)
        self.save_settings_and_hyperparameters(optimizer=self.optimizer)
        check_option("dropout", dropout, min=0, max=1, max_open=True)
        self.init_stage(model, tokenizer, lora, output_dir)
        self.model = None  # built in configure_model, so strategies can shard it as it is created
        self.val_loss = MeanMetric()
        self._step_started = 0.0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = self.load_trained(hp.model, dropout=hp.dropout, gradient_checkpointing=hp.gradient_checkpointing)
        self.shard([self.model])

    def forward(self, batch: dict[str, torch.Tensor], positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits at every position, or only at ``positions`` (the model's ``logits_to_keep``)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # packed batches carry position_ids, no mask
        if positions is not None:
            inputs["logits_to_keep"] = positions
        return self.model(**inputs, use_cache=False).logits

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss over the batch's labelled tokens, and their count. The LM head runs only where
        a label follows (measured at 135M: the vocabulary-wide logits of prompt positions were ~1 GiB of the peak)."""
        positions = labelled_positions(batch["labels"])
        return next_token_loss(self(batch, positions), batch["labels"], positions)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n_tokens = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_tokens", n_tokens.float(), reduce_fx="sum")
        mask = batch.get("attention_mask")
        self._tokens_in_step = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        # Token mean over the whole optimizer step (all accumulated batches, all ranks), not per batch.
        return self.sum_loss_for_step(loss * n_tokens, n_tokens)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_started
        self.log("train/tokens_per_sec", self._tokens_in_step / max(elapsed, 1e-9))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, n_tokens = self.loss(batch)
        self.val_loss.update(loss, weight=n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)  # MeanMetric already synced across ranks
        self.log("val/ppl", torch.exp(loss.clamp(max=50.0)))

    def configure_optimizers(self):
        return cosine_optimizer(self.model, self.optimizer, self.trainer.estimated_stepping_batches)

    def export_state(self) -> Optional[dict[str, torch.Tensor]]:
        """The best checkpoint's weights when ``export_checkpoint: best``; None means the current ones."""
        if self.hparams.export_checkpoint == "last":
            return None
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback else ""
        if not best:
            raise RuntimeError(
                "export_checkpoint=best needs a ModelCheckpoint with a `monitor` that saved a best checkpoint"
            )
        return torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
