"""What the ``lit-rlhf`` Trainer commands add for reliability, in one place (:class:`~lit_rlhf.trainer_cli.LitRLHFCLI`
calls these hooks):

- callbacks on every run: the finite-gradient guard (:mod:`lit_rlhf.reliability.guards`) and plain progress lines when
  output is not a terminal (:mod:`lit_rlhf.reliability.progress`);
- before the classes are built: ``trainer.precision: auto`` resolved for this hardware (:mod:`lit_rlhf.precision`)
  and exports a killed run left missing restored (:func:`lit_rlhf.atomic.recover_directory`);
- once the data is read, before any model loads: PPO's prompts checked against its rollout size and ``gamma_ptx``
  against its ptx data (:class:`EarlyDataChecks`);
- before ``fit``: the atomic checkpoint writer installed, the resume checkpoint checked whole and its changed options
  printed, every written directory locked, write-tested and checked for room (:mod:`lit_rlhf.reliability.preflight`).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from lit_rlhf.errors import ConfigError


def default_callbacks() -> list:
    from lit_rlhf.reliability.guards import FiniteGradientGuard
    from lit_rlhf.reliability.progress import PlainProgress

    return [FiniteGradientGuard(), PlainProgress(), EarlyDataChecks()]


def trainer_class() -> type:
    from lit_rlhf.precision import Trainer

    return Trainer


def before_instantiate(cli: Any) -> None:
    from lit_rlhf.precision import resolve_precision
    from lit_rlhf.reliability.preflight import recover_interrupted_exports

    config = cli.config.get(cli.config.get("subcommand")) if cli.config.get("subcommand") else cli.config
    if config is None:
        return
    trainer = config.get("trainer")
    if trainer is not None and "precision" in trainer:
        trainer["precision"] = resolve_precision(trainer.get("precision"))
    recover_interrupted_exports(config)


def check_ppo_data(module: Any, datamodule: Any, world_size: int) -> None:
    """PPO's data problems found before its models load: no ptx data for ``ptx.gamma > 0``, too few prompts for one
    rollout. Runs once the data module has read and validated its records (its own errors come first)."""
    ptx = getattr(module, "ptx", None)  # PPOModule's typed ptx group; other stages have none
    prompts = getattr(datamodule, "train_prompts", None)
    if ptx is None or prompts is None or not hasattr(datamodule, "rollout_sizes"):
        return
    ptx.require_data(bool(getattr(datamodule, "ptx_examples", None)))
    per_rollout, _ = datamodule.rollout_sizes()
    if len(prompts) < per_rollout * world_size:
        raise ConfigError(
            f"{len(prompts)} prompts in {datamodule.hparams.get('prompts')} cannot fill one rollout of "
            f"{per_rollout} prompts on each of {world_size} device(s); lower "
            "model.batch.rollout_batch_size or add prompts"
        )


class EarlyDataChecks(Callback):
    """Runs :func:`check_ppo_data` in ``setup``: after the data module's setup, before ``configure_model`` loads
    models."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            check_ppo_data(pl_module, trainer.datamodule, trainer.world_size)


def before_fit(cli: Any) -> None:
    from lit_rlhf.reliability.preflight import before_fit as preflight
    from lit_rlhf.resume import report_changed_options

    trainer, module = cli.trainer, cli.model
    ckpt_path = (
        cli.config.get(cli.config.get("subcommand"), {}).get("ckpt_path") if cli.config.get("subcommand") else None
    )
    resume = preflight(trainer, module, ckpt_path)
    if resume is not None:
        report_changed_options(resume, module)


def after_command() -> None:
    from lit_rlhf.reliability.run_lock import release_all

    release_all()
