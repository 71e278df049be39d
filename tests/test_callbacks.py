"""KLTracker, PretrainMixLogger and SampleLogger on a tiny PPO run."""

from __future__ import annotations

import csv
import logging

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from ppo_support import one_cpu_thread, ppo_world, tiny_data, tiny_module, tiny_trainer  # noqa: F401

from lit_rlhf.callbacks import KLTracker, PretrainMixLogger, SampleLogger
from lit_rlhf.reliability.guards import TrainingStopped


def logged_rows(logger: CSVLogger) -> list[dict[str, str]]:
    logger.save()
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def test_kl_tracker_logs_distribution_and_stops_with_a_checkpoint(ppo_world, tmp_path):
    tracker = KLTracker(max_kl=-1.0, stop_on_exceed=True, quantiles=(0.5, 0.9), checkpoint_dir=str(tmp_path / "kl"))
    module = tiny_module(ppo_world, output_dir=str(tmp_path / "export"))
    trainer = tiny_trainer(tmp_path, max_steps=20, callbacks=[tracker])
    with pytest.raises(
        TrainingStopped, match=r"at rollout 1 \(global step 2\), above max_kl=-1.0; stopped without exporting"
    ):
        trainer.fit(module, tiny_data(ppo_world, module))
    assert module.rollouts_done == 1  # stopped after the first rollout
    assert (tmp_path / "kl" / "kl_exceeded.ckpt").exists()
    assert not (tmp_path / "export").exists()
    assert tracker.state_dict() == {
        "total": pytest.approx(0.0, abs=1e-6),
        "count": 1,
    }  # policy == reference at rollout 0


def test_kl_tracker_only_warns_without_stop(ppo_world, tmp_path):
    module = tiny_module(ppo_world)
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[KLTracker(max_kl=-1.0, quantiles=(0.5, 0.9))])
    with pytest.warns(UserWarning, match="raise model.kl.coef"):
        trainer.fit(module, tiny_data(ppo_world, module))
    assert module.rollouts_done == 2
    for key in ("kl/per_token", "kl/per_sequence", "kl/running_mean", "kl/q50", "kl/q90"):
        assert key in trainer.callback_metrics, key


def test_pretrain_mix_logger_logs_ptx_stats_gradient_ratio_and_heldout_loss(ppo_world, tmp_path):
    logger = CSVLogger(tmp_path)
    module = tiny_module(ppo_world, gamma_ptx=2.0, ptx={"measure_grad_norm_every": 2})  # measured by the module
    trainer = tiny_trainer(
        tmp_path,
        max_steps=6,
        logger=logger,
        callbacks=[PretrainMixLogger()],
        limit_val_batches=1,
        val_check_interval=1,
        log_every_n_steps=1,
    )
    trainer.fit(module, tiny_data(ppo_world, module, val_text=ppo_world["heldout.txt"]))
    rows = logged_rows(logger)
    ratio_steps = sorted(int(r["step"]) for r in rows if r.get("ptx/grad_norm_ratio"))
    assert ratio_steps == [0, 2]  # measured on rollouts 0 and 2 only, never repeated in between
    ratio_row = next(r for r in rows if r.get("ptx/grad_norm_ratio"))
    assert float(ratio_row["ptx/grad_norm_ratio"]) == pytest.approx(
        float(ratio_row["ptx/grad_norm"]) / float(ratio_row["ptx/ppo_grad_norm"])
    )
    assert all(float(r["ptx/gamma"]) == 2.0 for r in rows if r.get("ptx/gamma"))
    assert sum(1 for r in rows if r.get("ptx/loss")) == 3
    assert sum(1 for r in rows if r.get("val/pretrain_loss")) == 3
    changes = [float(r["val/pretrain_loss_change"]) for r in rows if r.get("val/pretrain_loss_change")]
    assert len(changes) == 3 and changes[0] == 0.0


class TableSpy(WandbLogger):
    """A WandbLogger that records tables instead of starting wandb."""

    def __init__(self):
        super().__init__(offline=True)
        self.tables = []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data, step))

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    @property
    def experiment(self):
        return None


def test_sample_logger_sends_tables_to_wandb_every_n_rollouts(ppo_world, tmp_path):
    spy = TableSpy()
    module = tiny_module(ppo_world)
    trainer = tiny_trainer(
        tmp_path, max_steps=6, logger=spy, callbacks=[SampleLogger(every_n_rollouts=2, num_samples=3)]
    )
    trainer.fit(module, tiny_data(ppo_world, module))
    assert [step for _, _, _, step in spy.tables] == [2, 6]  # after rollouts 1 and 3 (global steps 2 and 6)
    key, columns, data, _ = spy.tables[0]
    assert key == "samples" and columns == ["step", "prompt", "response", "reward", "kl"] and len(data) == 3
    assert data[0][1].startswith("sort ") and isinstance(data[0][3], float)


def test_sample_logger_prints_without_wandb(ppo_world, tmp_path, caplog):
    module = tiny_module(ppo_world)
    trainer = tiny_trainer(
        tmp_path, max_steps=2, logger=CSVLogger(tmp_path), callbacks=[SampleLogger(every_n_rollouts=1, num_samples=2)]
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(module, tiny_data(ppo_world, module))
    assert "samples at step 2" in caplog.text and "'sort " in caplog.text
