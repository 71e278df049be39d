"""A table of what the policy writes: prompt, response, reward and KL, every N rollouts."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lit_rlhf.algorithms import masked_sum
from lit_rlhf.episodes import Episodes, RolloutSummary

COLUMNS = ["step", "prompt", "response", "reward", "kl"]


def sample_rows(rollout: Episodes, tokenizer, num_samples: int, step: int) -> list[list[Any]]:
    """The first ``num_samples`` episodes of a rollout as table rows (padding removed)."""
    kl = masked_sum(rollout.kl, rollout.response_mask, dim=1)
    prompt_mask = rollout.attention_mask[:, : rollout.prompt_length].bool()
    rows = []
    for i in range(min(num_samples, len(rollout))):
        prompt = tokenizer.decode(rollout.prompts[i][prompt_mask[i]].tolist(), skip_special_tokens=False)
        response = tokenizer.decode(rollout.responses[i][rollout.response_mask[i]].tolist(), skip_special_tokens=True)
        rows.append([step, prompt, response, round(float(rollout.scores[i]), 4), round(float(kl[i]), 4)])
    return rows


class SampleLogger(Callback):
    """Every ``every_n_rollouts`` rollouts, a table of prompt / response / reward / KL (rank 0 only).

    With a ``WandbLogger`` the table goes to W&B (``WandbLogger.log_table``); with any other logger it is
    printed when ``print_without_wandb`` is set, and skipped otherwise. Never runs during sanity checks.

    Args:
        every_n_rollouts: Log after the first rollout and then every N.
        num_samples: Episodes per table.
        key: Name of the W&B table.
        print_without_wandb: Print the rows when no WandbLogger is attached.
    """

    def __init__(
        self, every_n_rollouts: int = 10, num_samples: int = 8, key: str = "samples", print_without_wandb: bool = True
    ):
        if every_n_rollouts < 1:
            raise ValueError(f"every_n_rollouts must be >= 1, got {every_n_rollouts}")
        self.every = every_n_rollouts
        self.num_samples = num_samples
        self.key = key
        self.print_without_wandb = print_without_wandb

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        summary = RolloutSummary.from_outputs(outputs)
        if trainer.sanity_checking or not trainer.is_global_zero or summary is None or (summary.index - 1) % self.every:
            return
        episodes = summary.episodes
        rows = sample_rows(episodes, episodes.tokenizer or pl_module.tokenizer, self.num_samples, trainer.global_step)
        wandb = next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)
        if wandb is not None:
            wandb.log_table(key=self.key, columns=COLUMNS, data=rows, step=trainer.global_step)
        elif self.print_without_wandb:
            lines = [f"  reward {r[3]:+.3f}  kl {r[4]:.3f}  {r[1]!r} -> {r[2]!r}" for r in rows]
            rank_zero_info(f"samples at step {trainer.global_step}:\n" + "\n".join(lines))
