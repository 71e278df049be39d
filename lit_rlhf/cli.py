"""The ``lit-rlhf`` command: the Trainer commands (:mod:`lit_rlhf.trainer_cli`) and the others (sample, evaluate,
label, recipe, sandbox), each imported only when it runs."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

#: Commands that are not Trainer entry points: name -> "module:function" taking argv.
EXTRA_COMMANDS = {
    "sample": "lit_rlhf.sampling:main",
    "evaluate": "lit_rlhf.evaluate.command:main",
    "label": "lit_rlhf.label.commands:main",
    "recipe": "lit_rlhf.recipes.commands:main",
    "sandbox": "lit_rlhf.sandbox.commands:main",
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``lit-rlhf`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    cli_args = None if args is None else argv  # LightningCLI reads sys.argv itself when args is None
    # Offline by default so a first run needs no account and no network; WANDB_MODE=online opts in.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            _load(EXTRA_COMMANDS[argv[0]])(argv[1:])
            return
        from lit_rlhf.trainer_cli import run_trainer_command

        run_trainer_command(cli_args, argv)
    except Exception as e:
        from lit_rlhf.reliability.guards import TrainingStopped

        if isinstance(e, TrainingStopped):  # a guard (NaN/inf, KL bound) stopped a run that started well
            print(f"lit-rlhf: stopped: {e}", file=sys.stderr)
            sys.exit(3)
        user_error = _user_error_in(e)
        if user_error is None:
            raise
        print(f"lit-rlhf: error: {user_error}", file=sys.stderr)
        sys.exit(2)


def _user_error_in(error: Optional[BaseException]) -> Optional[BaseException]:
    """The :class:`~lit_rlhf.errors.UserError` in ``error``'s chain: jsonargparse wraps errors raised by
    constructors in a ValueError."""
    from lit_rlhf.errors import UserError

    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
