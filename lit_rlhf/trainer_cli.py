"""The Trainer commands of ``lit-rlhf`` (fit, validate, ...): a LightningCLI whose module and data module are
chosen by ``class_path``. Kept apart from :mod:`lit_rlhf.cli` so that the other commands (``label``,
``sandbox``) start without importing Lightning."""

from __future__ import annotations

import os
import warnings
from argparse import RawDescriptionHelpFormatter
from typing import Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lit_rlhf import reliability
from lit_rlhf.cli_errors import OneLineErrorParser
from lit_rlhf.resume import PendingValidation

DESCRIPTION = """\
lit-rlhf: InstructGPT's three stages on PyTorch Lightning. Pick a stage with a config:

  SFT  lit-rlhf fit --config configs/sft.yaml   (SFTModule + SFTDataModule)
       Fine-tunes a pretrained causal LM on demonstrations; writes a Hugging Face directory.
  RM   lit-rlhf fit --config configs/rm.yaml    (RewardModule + RewardDataModule)
       Learns a scalar reward from rankings of K responses per prompt (all pairs of a prompt in one element).
  PPO  lit-rlhf fit --config configs/ppo.yaml   (PPOModule + PromptDataModule)
       Optimises the SFT policy against the reward model with a per-token KL penalty, plus pretraining (ptx).

Other commands: `lit-rlhf sample --help` (sample K responses for labeling),
`lit-rlhf sandbox --help` (the offline sandbox world and its whole pipeline),
`lit-rlhf label --help` (a web app where people rank the sampled responses).
"""


class LitRLHFCLI(LightningCLI):
    """LightningCLI with every LightningModule / LightningDataModule selectable by ``class_path``."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True):
        # Imported so that their classes are known by short name (`class_path: SFTDataModule`).
        import lit_rlhf.data.comparisons  # noqa: F401
        import lit_rlhf.data.prompts  # noqa: F401
        import lit_rlhf.data.sft  # noqa: F401
        import lit_rlhf.modules  # noqa: F401

        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            trainer_class=reliability.trainer_class(),  # takes `trainer.precision: auto` (lit_rlhf.precision)
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # Each module builds its own optimizer and schedule from its documented arguments: one way to set them.
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": RawDescriptionHelpFormatter},
            parser_class=OneLineErrorParser,  # configuration errors as one line, not the usage text
            # Added to the config's callbacks: a resumed run first runs a validation the interrupted one still owed.
            trainer_defaults={"callbacks": [PendingValidation(), *reliability.default_callbacks()]},
            args=args,
            run=run,
        )

    # Reliability (lit_rlhf.reliability): resume options win, interrupted exports restored, disks checked first.
    def _parse_ckpt_path(self) -> None:
        """Not LightningCLI's merge of a checkpoint file's hyperparameters over the config: the command line and
        config win on every resume, and ``before_fit`` prints each option that differs from the checkpoint's."""

    def before_instantiate_classes(self) -> None:
        reliability.before_instantiate(self)

    def before_fit(self) -> None:
        reliability.before_fit(self)

    def add_arguments_to_parser(self, parser) -> None:
        # PPO's data module takes its batch sizes and lookahead from the module's `batch` group: one place to set them.
        for size in ("rollout_batch_size", "samples_per_prompt", "max_staleness"):
            parser.link_arguments(f"model.init_args.batch.{size}", f"data.init_args.{size}", apply_on="parse")


def run_trainer_command(args: Optional[list[str]], argv: list[str]) -> None:
    """Run ``lit-rlhf <fit|validate|...>``; ``args`` None lets LightningCLI read ``sys.argv`` itself."""
    # The command owns its process, so it may silence this: frozen models (reference, reward) are in eval
    # mode on purpose. Library code leaves process-wide warning filters alone.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
    # PPO checkpoints the state after its rollout's optimizer steps on purpose (a resume continues from there).
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    OneLineErrorParser.command_args = argv
    OneLineErrorParser.command_dir = os.getcwd()  # config errors name their file even from a subdirectory
    try:
        LitRLHFCLI(args=args)
    finally:
        reliability.after_command()
