"""Issue 25, the fast half (the kill and full-disk half is in tests/test_faults.py, ``-m slow``): every stage stops
on NaN before it exports, resume options always win, an export swap never leaves the target missing, one run per
directory, unwritable/full/truncated files found in one line, clear data and config messages, progress lines in
a log file, and precision that fits the hardware."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_jsonl

from lit_rlhf.cli import main

SANDBOX = "lit_rlhf/sandbox/assets"
TINY = [
    "--model.init_args.model",
    f"{SANDBOX}/base_config.json",
    "--model.init_args.tokenizer",
    f"{SANDBOX}/tokenizer",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sft_args(*extra: str) -> list[str]:
    demos = (REPO_ROOT / SANDBOX / "data/sft_train.jsonl").read_text().splitlines()
    Path("sft.jsonl").write_text("\n".join(demos[:16]) + "\n")
    return [
        "fit",
        "--config",
        "configs/sft.yaml",
        *TINY,
        "--data.init_args.train",
        "sft.jsonl",
        "--data.init_args.val",
        "null",
        "--data.init_args.batch_size",
        "4",
        "--trainer.max_epochs",
        "2",
        *extra,
    ]


def rm_args(*extra: str) -> list[str]:
    demos = [json.loads(line) for line in (REPO_ROOT / SANDBOX / "data/sft_train.jsonl").read_text().splitlines()[:12]]
    write_jsonl(
        Path("rm.jsonl"),
        [{"prompt": d["prompt"], "responses": [d["response"], d["response"][::-1] + " x"]} for d in demos],
    )
    write_jsonl(Path("demos.jsonl"), demos[:4])
    return [
        "fit",
        "--config",
        "configs/rm.yaml",
        *TINY,
        "--data.init_args.train",
        "rm.jsonl",
        "--data.init_args.val",
        "null",
        "--data.init_args.center_on",
        "demos.jsonl",
        "--data.init_args.batch_size",
        "4",
        *extra,
    ]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


# ------------------------------------------------------------------------------------------------
# 1. SFT, RM and DPO (every automatically optimized stage) stop on a NaN/inf gradient: exit 3, one line, no export.


def dpo_args(*extra: str) -> list[str]:
    import shutil

    rm_args()  # writes the comparison data and demos the DPO run reads
    shutil.copytree(REPO_ROOT / SANDBOX / "base_model", "policy")
    return [
        "fit",
        "--config",
        "configs/dpo.yaml",
        "--model.init_args.policy",
        "policy",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.train",
        "rm.jsonl",
        "--data.init_args.val",
        "null",
        "--data.init_args.batch_size",
        "4",
        *extra,
    ]


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_nan_from_a_huge_learning_rate_stops_with_exit_3_and_exports_nothing(in_scratch_dir, capsys, stage):
    make_args = {"sft": sft_args, "rm": rm_args, "dpo": dpo_args}[stage]
    args = make_args("--model.init_args.optimizer.learning_rate", "1000", "--trainer.max_epochs", "3")
    code, out = run_cli(args, capsys)
    assert code == 3, out[-3000:]
    stopped = lines_starting(out, "lit-rlhf: stopped:")
    assert len(stopped) == 1 and "NaN or inf" in stopped[0] and "without exporting" in stopped[0]
    assert "Traceback" not in out
    assert not (in_scratch_dir / f"runs/{stage}/model").exists()
    for path in (in_scratch_dir / f"runs/{stage}/checkpoints").glob("*.ckpt"):  # the last good ones: all finite
        state = torch.load(path, weights_only=False, map_location="cpu")["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_the_guard_is_a_default_callback_of_every_stage():
    from lit_rlhf.reliability import default_callbacks
    from lit_rlhf.reliability.guards import FiniteGradientGuard

    assert any(isinstance(c, FiniteGradientGuard) for c in default_callbacks())


def test_the_guard_checks_gradients_before_the_step():
    from lit_rlhf.reliability.guards import gradients_finite

    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    assert gradients_finite(optimizer)
    p.grad = torch.tensor([1.0, float("nan"), 3.0])
    assert not gradients_finite(optimizer)


# ------------------------------------------------------------------------------------------------
# 2. An explicit --ckpt_path file: the command line wins, and every changed option is printed.


def test_explicit_checkpoint_path_keeps_the_new_learning_rate_and_prints_the_change(in_scratch_dir, capsys):
    code, out = run_cli(
        sft_args("--model.init_args.optimizer.learning_rate", "0.003", "--trainer.max_steps", "2"), capsys
    )
    assert code == 0, out[-3000:]
    last = in_scratch_dir / "runs/sft/checkpoints/last.ckpt"
    code, out = run_cli(
        sft_args(
            "--model.init_args.optimizer.learning_rate", "1e-05", "--trainer.max_steps", "4", "--ckpt_path", str(last)
        ),
        capsys,
    )
    assert code == 0, out[-3000:]
    resumed = torch.load(last, weights_only=False, map_location="cpu")
    assert resumed["global_step"] == 4
    assert resumed["hyper_parameters"]["optimizer"]["learning_rate"] == pytest.approx(1e-5)
    assert resumed["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(1e-5)
    changed = lines_starting(out, "lit-rlhf: resuming from")
    assert len(changed) == 1 and "learning_rate = 1e-05 (checkpoint: 0.003)" in changed[0], out[-2000:]


def test_changed_options_compares_flattened_settings_groups():
    from lit_rlhf.resume import changed_options

    saved = {"optimizer": {"learning_rate": 1000.0, "betas": (0.9, 0.95)}, "kl_coef": 0.02, "model": "a"}
    now = {"optimizer": {"learning_rate": 1e-5, "betas": [0.9, 0.95]}, "kl_coef": 0.02, "model": "a", "new_option": 1}
    assert changed_options(saved, now) == {"optimizer.learning_rate": (1000.0, 1e-5)}


# ------------------------------------------------------------------------------------------------
# 3. The export swap never leaves the target missing; only dead processes' temporaries are removed.


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def marked_export(path: Path, content: str) -> Path:
    from lit_rlhf.atomic import COMMIT_MARKER

    path.mkdir(parents=True)
    (path / "config.json").write_text(content)
    (path / COMMIT_MARKER).write_text(json.dumps({"files": {"config.json": len(content)}, "command": None}))
    return path


def test_a_kill_between_the_two_renames_is_recovered_from_the_complete_new_copy(tmp_path):
    from lit_rlhf.atomic import recover_directory

    pid = dead_pid()
    marked_export(tmp_path / f".model.old-{pid}", "old")
    marked_export(tmp_path / f".model.tmp-{pid}", "new")
    note = recover_directory(tmp_path / "model")
    assert note and "complete new export" in note
    assert (tmp_path / "model/config.json").read_text() == "new"


def test_an_incomplete_new_copy_gives_back_the_previous_export(tmp_path):
    from lit_rlhf.atomic import recover_directory

    pid = dead_pid()
    marked_export(tmp_path / f".model.old-{pid}", "old")
    (tmp_path / f".model.tmp-{pid}").mkdir()  # killed before its marker was written
    assert "previous export" in recover_directory(tmp_path / "model")
    assert (tmp_path / "model/config.json").read_text() == "old"


def test_the_swap_exchanges_so_the_target_never_goes_missing(tmp_path, monkeypatch):
    from lit_rlhf import atomic

    target = marked_export(tmp_path / "model", "old")
    seen = []
    original = atomic._exchange

    def watching(a, b):
        ok = original(a, b)
        seen.append((ok, target.exists()))
        return ok

    monkeypatch.setattr(atomic, "_exchange", watching)
    with atomic.atomic_directory(target) as out:
        (out / "config.json").write_text("new")
    assert seen == [(True, True)]
    assert (target / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_live_runs_temporary_is_not_deleted_by_another_export(tmp_path):
    from lit_rlhf.atomic import atomic_directory

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = tmp_path / f".model.tmp-{live.pid}"
        other.mkdir()
        (other / "weights").write_text("half written by a live run")
        stale = tmp_path / f".model.tmp-{dead_pid()}"
        stale.mkdir()
        with atomic_directory(tmp_path / "model") as out:
            (out / "config.json").write_text("{}")
        assert other.is_dir() and not stale.exists()
    finally:
        live.kill()
        live.wait()


def test_the_cli_restores_a_model_directory_before_the_stage_that_reads_it(in_scratch_dir, capsys):
    import shutil

    pid = dead_pid()
    shutil.copytree(in_scratch_dir / SANDBOX / "base_model", in_scratch_dir / f"runs/sft/.model.tmp-{pid}")
    from lit_rlhf.atomic import COMMIT_MARKER

    tmp = in_scratch_dir / f"runs/sft/.model.tmp-{pid}"
    files = {p.name: p.stat().st_size for p in tmp.iterdir()}
    (tmp / COMMIT_MARKER).write_text(json.dumps({"files": files, "command": None}))
    args = rm_args(
        "--model.init_args.model",
        "runs/sft/model",
        "--model.init_args.tokenizer",
        "null",
        "--trainer.max_steps",
        "1",
        "--model.init_args.output_dir",
        "null",
    )
    code, out = run_cli(args, capsys)
    assert code == 0, out[-3000:]
    assert "restored the complete new export" in out
    assert (in_scratch_dir / "runs/sft/model/model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
# 4. One run per output and checkpoint directory.

HOLD = (
    "import sys, time; from lit_rlhf.reliability.run_lock import acquire; acquire(sys.argv[1], 'model.output_dir'); "
    "print('held', flush=True); time.sleep(60)"
)


def test_a_second_run_meets_one_line_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from lit_rlhf.reliability.run_lock import DirectoryLocked, acquire, release_all

    target = tmp_path / "model"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(
            DirectoryLocked, match=rf"model.output_dir '{target}' is in use by another run: PID {holder.pid}"
        ):
            acquire(target, "model.output_dir")
    finally:
        holder.kill()
        holder.wait()
    acquire(target, "model.output_dir")  # the holder died: its lock is free
    release_all()


def test_the_cli_refuses_a_locked_output_directory_before_training(in_scratch_dir, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, "runs/sft/model"],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        cwd=in_scratch_dir,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        code, out = run_cli(sft_args("--trainer.max_steps", "1"), capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    errors = lines_starting(out, "lit-rlhf: error:")
    assert len(errors) == 1 and f"PID {holder.pid}" in errors[0] and "is in use by another run" in errors[0]
    assert not (in_scratch_dir / "runs/sft/checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# 5. Unwritable or full directories before the first step; checkpoints whole or absent; a truncated one named.


def test_no_room_for_a_checkpoint_is_found_before_the_first_step(in_scratch_dir, capsys, monkeypatch):
    from lit_rlhf.reliability import preflight

    monkeypatch.setattr(preflight, "_free_bytes", lambda directory: 1_000_000)  # the tiny model needs ~13 MiB
    code, out = run_cli(sft_args("--trainer.max_steps", "1"), capsys)
    assert code == 2
    errors = lines_starting(out, "lit-rlhf: error:")
    assert len(errors) == 1 and "1.0 MiB free on that filesystem" in errors[0] and "need about" in errors[0], out[
        -2000:
    ]
    assert not (in_scratch_dir / "runs/sft/checkpoints").exists()


def test_an_unwritable_directory_is_found_before_the_first_step(in_scratch_dir, capsys):
    (in_scratch_dir / "blocked").write_text("a file where a directory should be")
    code, out = run_cli(sft_args("--trainer.max_steps", "1", "--model.init_args.output_dir", "blocked/model"), capsys)
    assert code == 2
    errors = lines_starting(out, "lit-rlhf: error:")
    assert len(errors) == 1 and "model.output_dir 'blocked/model': cannot write to" in errors[0], out[-2000:]


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    from lit_rlhf.reliability import checkpoint_io
    from lit_rlhf.reliability.checkpoint_io import AtomicCheckpointIO, CheckpointWriteFailed

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, target)
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 1000)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(CheckpointWriteFailed, match="No space left on device; nothing was half-written"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resuming_from_a_truncated_checkpoint_is_one_line(in_scratch_dir, capsys):
    code, out = run_cli(sft_args("--trainer.max_steps", "1"), capsys)
    assert code == 0, out[-2000:]
    last = in_scratch_dir / "runs/sft/checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    for ckpt_path in ("last", str(last)):
        code, out = run_cli(sft_args("--trainer.max_steps", "2", "--ckpt_path", ckpt_path), capsys)
        assert code == 2, out[-2000:]
        errors = lines_starting(out, "lit-rlhf: error:")
        assert len(errors) == 1 and "last.ckpt is truncated" in errors[0] and "Traceback" not in out


# ------------------------------------------------------------------------------------------------
# 6. Messages.


def test_truncation_warning_says_kept_and_names_the_records(tiny_tokenizer):
    from lit_rlhf.data.common import DropCounter
    from lit_rlhf.data.comparisons import encode_comparisons
    from lit_rlhf.data.records import FieldMap, Record

    records = [
        Record({"prompt": "p" * 30, "responses": ["a", "b"]}, "x.jsonl", 1),
        Record({"prompt": "q", "responses": ["a", "b"]}, "x.jsonl", 2),
        Record({"prompt": "p" * 30, "responses": ["a", "b"]}, "x.jsonl", 3),
    ]
    counter = DropCounter("RM")
    encode_comparisons(
        records, tiny_tokenizer, FieldMap(), max_length=10, truncation="left", on_invalid="error", counter=counter
    )
    with pytest.warns(UserWarning) as warned:
        counter.report("train", 3)
    message = str(warned[0].message)
    assert "dropped" not in message
    assert (
        "truncated 4 sequences and kept them: 4 sequences truncated on the left (kept) (x.jsonl:1, x.jsonl:3)"
        in message
    )
    assert "Using 3 records" in message


def test_rm_left_truncation_trims_the_prompt_and_drops_a_response_that_alone_is_too_long(tiny_tokenizer):
    from lit_rlhf.data.common import DropCounter
    from lit_rlhf.data.comparisons import RESPONSE_TOO_LONG, encode_comparisons
    from lit_rlhf.data.records import FieldMap, Record

    records = [
        Record({"prompt": "abcdefgh", "responses": ["xy", "z"]}, "x.jsonl", 1),
        Record({"prompt": "hello", "responses": ["a" * 12, "b"]}, "x.jsonl", 2),
    ]
    counter = DropCounter("RM")
    groups = encode_comparisons(
        records, tiny_tokenizer, FieldMap(), max_length=8, truncation="left", on_invalid="error", counter=counter
    )
    assert len(groups) == 1
    kept = tiny_tokenizer.decode(groups[0].sequences[0])
    assert kept.endswith("xy<eos>") and kept.startswith("defgh")  # the prompt's start trimmed, its end kept
    assert counter.reasons[RESPONSE_TOO_LONG] == 1 and counter.records[RESPONSE_TOO_LONG] == ["x.jsonl:2"]


CONFIG_CASES = [
    (
        "yaml-in-subdirectory",
        ["--config", "sub/dir/typo.yaml"],
        {"sub/dir/typo.yaml": "data:\n  init_args:\n    batch_sizee: 8\n"},
        "sub/dir/typo.yaml: data.init_args.batch_sizee: unknown option of SFTDataModule; did you mean 'batch_size'?",
    ),
    (
        "trainer-max-step",
        ["--config", "t.yaml"],
        {"t.yaml": "trainer:\n  max_step: 3\n"},
        "t.yaml: trainer.max_step: unknown option; did you mean 'trainer.max_steps'?",
    ),
    (
        "truncation-value",
        ["--data.init_args.truncation", "middle"],
        {},
        "data.init_args.truncation: must be one of 'right', 'drop', 'error', got 'middle'",
    ),
    (
        "truncation-value-in-subdir-yaml",
        ["--config", "c/t.yaml"],
        {"c/t.yaml": "data:\n  init_args:\n    truncation: middle\n"},
        "c/t.yaml: data.init_args.truncation: must be one of 'right', 'drop', 'error', got 'middle'",
    ),
    (
        "pretty-json-named-jsonl",
        ["--data.init_args.train", "p.jsonl", "--data.init_args.val", "null"],
        {"p.jsonl": '[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c", "response": "d"}\n]\n'},
        "the whole file is one JSON array, not JSON Lines (one object a line): name it p.json (.json)",
    ),
]


@pytest.mark.parametrize("extra, files, expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_and_data_messages_are_one_clear_line(in_scratch_dir, capsys, extra, files, expected):
    for name, text in files.items():
        (in_scratch_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (in_scratch_dir / name).write_text(text)
    code, out = run_cli(["fit", "--config", "configs/sft.yaml", *TINY, *extra], capsys)
    assert code == 2, out[-2000:]
    errors = lines_starting(out, "lit-rlhf: error:")
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (in_scratch_dir / "runs/sft/checkpoints").exists()


def ppo_args(world, *extra):
    return [
        "fit",
        "--config",
        "configs/ppo.yaml",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--model.init_args.policy",
        world["sft"],
        "--model.init_args.reward_model",
        world["rm"],
        "--data.init_args.prompts",
        world["prompts.jsonl"],
        "--data.init_args.ptx_text",
        world["ptx.txt"],
        "--data.init_args.val_text",
        "null",
        "--model.init_args.batch.rollout_batch_size",
        "4",
        "--model.init_args.batch.minibatch_size",
        "2",
        "--model.init_args.batch.micro_batch_size",
        "2",
        "--model.init_args.sampling.max_new_tokens",
        "4",
        "--model.init_args.ptx.micro_batch_size",
        "8",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["--model.init_args.batch.rollout_batch_size", "16", "--model.init_args.batch.minibatch_size", "4"],
            "12 prompts in {prompts} cannot fill one rollout of 16 prompts",
        ),
        (["--data.init_args.ptx_text", "null"], "model.ptx.gamma=1.0 needs pretraining data"),
    ],
    ids=["too-few-prompts", "gamma-ptx-without-ptx"],
)
def test_ppo_data_problems_are_reported_before_any_model_loads(
    in_scratch_dir, capsys, monkeypatch, ppo_world, extra, expected
):
    from lit_rlhf.modules.ppo import PPOModule

    def no_models(self):
        raise AssertionError("a model was loaded before the data check")

    monkeypatch.setattr(PPOModule, "configure_model", no_models)
    code, out = run_cli(ppo_args(ppo_world, "--model.init_args.ptx.gamma", "1.0", *extra), capsys)
    assert code == 2, out[-2000:]
    errors = lines_starting(out, "lit-rlhf: error:")
    assert len(errors) == 1 and expected.format(prompts=ppo_world["prompts.jsonl"]) in errors[0], errors


def test_ppo_runs_print_no_manual_optimization_checkpoint_warning(in_scratch_dir, capsys, recwarn, ppo_world):
    every_2 = in_scratch_dir / "ckpt.yaml"
    every_2.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {dirpath: runs/ppo/checkpoints, save_last: true, every_n_train_steps: 2}\n"
    )
    code, out = run_cli(ppo_args(ppo_world, "--config", str(every_2), "--trainer.max_steps", "4"), capsys)
    assert code == 0, out[-2000:]
    assert (in_scratch_dir / "runs/ppo/checkpoints/last.ckpt").is_file()
    assert not [w for w in recwarn if "manual optimization" in str(w.message)]
    assert "manual optimization" not in out


from ppo_support import ppo_world  # noqa: E402,F401  (the session fixture)

# ------------------------------------------------------------------------------------------------
# 7. Progress in a log file.


def test_progress_lines_and_logger_flushes_when_output_is_not_a_terminal(in_scratch_dir, capsys):
    progress = in_scratch_dir / "progress.yaml"
    progress.write_text(
        "trainer:\n  logger: {class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: logs}}\n"
        "  callbacks:\n    - class_path: lit_rlhf.reliability.progress.PlainProgress\n"
        "      init_args: {every_n_steps: 2}\n"
    )
    args = sft_args("--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1")
    at = args.index("--trainer.logger")
    code, out = run_cli([*args[:at], *args[at + 2 :], "--config", str(progress)], capsys)
    assert code == 0, out[-2000:]
    lines = lines_starting(out, "lit-rlhf: step ")
    assert [line.split()[2] for line in lines][:3] == ["2/6", "4/6", "6/6"], lines
    assert "train/loss" in lines[0] and "steps/s" in lines[0] and "ETA" in lines[0]
    (metrics,) = (in_scratch_dir / "logs").rglob("metrics.csv")
    assert len(metrics.read_text().splitlines()) > 6


def test_progress_flushes_the_loggers_at_its_rhythm():
    from lit_rlhf.reliability.progress import PlainProgress

    class Logger:
        saved = 0

        def save(self):
            self.saved += 1

    class FakeTrainer:
        is_global_zero, global_step, max_steps, max_epochs, current_epoch = True, 0, 10, 1, 0
        num_training_batches = 10
        callback_metrics = {"train/loss": torch.tensor(0.5)}
        loggers = [Logger()]

        class fit_loop:
            class epoch_loop:
                class batch_progress:
                    class current:
                        ready = 0

    trainer, callback = FakeTrainer(), PlainProgress(every_n_steps=3, every_n_seconds=1e9, force=True)
    callback.on_train_start(trainer, None)
    for step in range(1, 10):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step)
    assert trainer.loggers[0].saved == 3


# ------------------------------------------------------------------------------------------------
# 8. Precision that fits the hardware.


def test_auto_precision_picks_bf16_only_where_native(monkeypatch, capsys):
    from lit_rlhf import precision

    monkeypatch.setattr(precision, "bf16_native", lambda device=None: True)
    assert precision.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(precision, "bf16_native", lambda device=None: False)
    assert precision.resolve_precision("auto") == "32-true"
    assert precision.resolve_precision("32-true") == "32-true"
    monkeypatch.setattr(precision, "_warned", set())
    assert precision.resolve_precision("bf16-mixed") == "bf16-mixed"
    precision.resolve_precision("bf16-true")
    precision.resolve_precision("bf16-mixed")
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "no native bfloat16" in line]) == 2  # once per setting, said at start-up


def test_bf16_probe_reads_the_cpu_flags(monkeypatch):
    from lit_rlhf import precision

    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert not precision.bf16_native()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert precision.bf16_native()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert precision.bf16_native("cpu")


def test_engine_dtype_auto_avoids_emulated_bf16(monkeypatch):
    from types import SimpleNamespace

    from lit_rlhf import precision

    bf16_model = SimpleNamespace(dtype="bfloat16")
    monkeypatch.setattr(precision, "bf16_native", lambda device=None: False)
    assert precision.engine_dtype("auto", bf16_model, on_gpu=False) == "float32"
    assert precision.engine_dtype("auto", SimpleNamespace(dtype="float16"), on_gpu=False) == "float16"
    monkeypatch.setattr(precision, "bf16_native", lambda device=None: True)
    assert precision.engine_dtype("auto", bf16_model, on_gpu=False) == "bfloat16"


def test_trainer_precision_auto_in_yaml_and_the_recipes_use_it(in_scratch_dir, capsys, monkeypatch):
    import yaml

    from lit_rlhf import precision

    for stage in ("sft", "rm", "ppo"):
        recipe = yaml.safe_load((REPO_ROOT / f"configs/recipes/smollm2-135m/{stage}.yaml").read_text())
        assert recipe["trainer"]["precision"] == "auto"
    monkeypatch.setattr(precision, "bf16_native", lambda device=None: False)
    code, out = run_cli(sft_args("--trainer.precision", "auto", "--trainer.max_steps", "1"), capsys)
    assert code == 0, out[-2000:]
    ckpt = torch.load(in_scratch_dir / "runs/sft/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 1
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
