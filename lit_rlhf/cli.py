"""The ``lit-rlhf`` command: a LightningCLI whose module and data module are chosen by ``class_path``."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from argparse import RawDescriptionHelpFormatter
from typing import Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.warnings import PossibleUserWarning

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

#: Commands that are not Trainer entry points: name -> "module:function" taking argv.
EXTRA_COMMANDS = {
    "sample": "lit_rlhf.sampling:main",
    "label": "lit_rlhf.label.commands:main",
    "sandbox": "lit_rlhf.sandbox.commands:main",
}

#: Errors a user fixes in their data or config: printed as one clear line instead of a traceback.
USER_ERRORS = ("lit_rlhf.data.records:RecordError", "lit_rlhf.models:ModelSourceError", "lit_rlhf.errors:ConfigError",
               "lit_rlhf.rewards.base:RewardError", "lit_rlhf.sandbox.pipeline:StageFailed")


class LitRLHFCLI(LightningCLI):
    """LightningCLI with every LightningModule / LightningDataModule selectable by ``class_path``."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True):
        import lit_rlhf.data  # noqa: F401  (registers the data modules for short class names)
        import lit_rlhf.modules  # noqa: F401

        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # Each module builds its own optimizer and schedule from its documented arguments: one way to set them.
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": RawDescriptionHelpFormatter},
            parser_class=OneLineErrorParser,  # configuration errors as one line, not the usage text
            # Added to the config's callbacks: a resumed run first runs a validation the interrupted one still owed.
            trainer_defaults={"callbacks": [PendingValidation()]},
            args=args,
            run=run,
        )


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _user_error_types() -> tuple[type, ...]:
    types = []
    for target in USER_ERRORS:
        try:
            types.append(_load(target))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``lit-rlhf`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    cli_args = None if args is None else argv  # LightningCLI reads sys.argv itself when args is None
    # Offline by default so a first run needs no account and no network; WANDB_MODE=online opts in.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The command owns its process, so it may silence this: frozen models (reference, reward) are in eval
    # mode on purpose. Library code leaves process-wide warning filters alone.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
    OneLineErrorParser.command_args = argv
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            _load(EXTRA_COMMANDS[argv[0]])(argv[1:])
            return
        LitRLHFCLI(args=cli_args)
    except Exception as e:
        from lit_rlhf.modules.guards import TrainingStopped

        if isinstance(e, TrainingStopped):  # a guard (NaN/inf, KL bound) stopped a run that started well
            print(f"lit-rlhf: stopped: {e}", file=sys.stderr)
            sys.exit(3)
        user_error = _user_error_in(e)
        if user_error is None:
            raise
        print(f"lit-rlhf: error: {user_error}", file=sys.stderr)
        sys.exit(2)


def _user_error_in(error: Optional[BaseException]) -> Optional[BaseException]:
    """The user error in ``error``'s chain: jsonargparse wraps errors raised by constructors in a ValueError."""
    types = _user_error_types()
    while error is not None:
        if isinstance(error, types):
            return error
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
