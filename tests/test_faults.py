"""Fault injection: ``lit-rlhf fit`` runs of SFT, RM and PPO are SIGKILLed at chosen and random moments
(between steps, inside a checkpoint save, inside the Hugging Face export), resumed with ``--ckpt_path last``,
and must end exactly like an uninterrupted run: bitwise equal exported weights and equal per-step metrics.
A kill inside the export must leave the previous export intact and never a half-written directory.

Slow (real processes, about 20 runs): ``python -m pytest -m slow tests/test_faults.py`` (``.ci/run`` runs it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SANDBOX = REPO_ROOT / "lit_rlhf/sandbox/assets"
TINY_MODEL = [
    "--model.init_args.model",
    str(SANDBOX / "base_config.json"),
    "--model.init_args.tokenizer",
    str(SANDBOX / "tokenizer"),
]
STAGES = {
    # 20 demonstrations, batch 4: 5 steps an epoch, 2 epochs, validation after each epoch.
    "sft": [
        "--config",
        "configs/sft.yaml",
        *TINY_MODEL,
        "--data.init_args.train",
        "sft.jsonl",
        "--data.init_args.val",
        "sft_val.jsonl",
        "--data.init_args.batch_size",
        "4",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_val_batches",
        "2",
    ],
    # 20 comparisons, batch 4: 5 steps, then centering on 8 demonstrations.
    "rm": [
        "--config",
        "configs/rm.yaml",
        *TINY_MODEL,
        "--data.init_args.train",
        "rm.jsonl",
        "--data.init_args.val",
        "rm_val.jsonl",
        "--data.init_args.center_on",
        "sft_val.jsonl",
        "--data.init_args.batch_size",
        "4",
    ],
    # 3 rollouts of 4 episodes, 2 optimizer steps each, with ptx.
    "ppo": [
        "--config",
        "configs/ppo.yaml",
        "--model.init_args.policy",
        str(SANDBOX / "base_model"),
        "--model.init_args.reward_model",
        str(SANDBOX / "base_model"),
        "--model.init_args.batch.rollout_batch_size",
        "4",
        "--model.init_args.batch.minibatch_size",
        "2",
        "--model.init_args.batch.micro_batch_size",
        "2",
        "--model.init_args.sampling.max_new_tokens",
        "6",
        "--model.init_args.ptx.micro_batch_size",
        "4",
        "--data.init_args.ptx_ratio",
        "1",
        "--data.init_args.val_text",
        "null",
        "--trainer.max_steps",
        "6",
        "--trainer.limit_val_batches",
        "0",
    ],
}
RUN_TIMEOUT_S = 400


def write_data(root: Path) -> None:
    demos = [json.loads(line) for line in (SANDBOX / "data/sft_train.jsonl").read_text().splitlines()[:28]]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demos[:20]))
    (root / "sft_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demos[20:28]))
    rng = random.Random(0)
    for name, n in (("rm.jsonl", 20), ("rm_val.jsonl", 6)):
        rows = [
            {
                "prompt": d["prompt"],
                "responses": [d["response"], d["response"][::-1] + " x", "no idea" + "!" * rng.randint(1, 3)],
            }
            for d in (demos * 2)[:n]
        ]
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def workdir(tmp: Path) -> Path:
    for name in ("configs", "lit_rlhf"):
        os.symlink(REPO_ROOT / name, tmp / name)
    write_data(tmp)
    return tmp


def start(
    root: Path,
    stage: str,
    *,
    at_step: int = -1,
    during: str = "step",
    ckpt_path: str | None = None,
    extra: tuple[str, ...] = (),
    callbacks: tuple[dict, ...] = (),
    log: str | None = None,
    name: str = "fault",
) -> subprocess.Popen:
    """Start one ``lit-rlhf fit`` process in ``root`` (its output appended to ``<stage>.log``, or ``log``)."""
    fault = {
        "trainer": {
            "logger": False,
            "enable_progress_bar": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": f"runs/{stage}/checkpoints", "save_last": True, "every_n_train_steps": 1},
                },
                {
                    "class_path": "fault_support.KillAndRecord",
                    "init_args": {"record": str(root / f"{stage}_steps.jsonl"), "at_step": at_step, "during": during},
                },
                *callbacks,
            ],
        }
    }
    (root / f"{name}.yaml").write_text(json.dumps(fault))
    args = [sys.executable, "-m", "lit_rlhf.cli", "fit", *STAGES[stage], "--config", f"{name}.yaml", *extra]
    if ckpt_path:
        args += ["--ckpt_path", ckpt_path]
    env = dict(
        os.environ,
        PYTHONPATH=f"{REPO_ROOT / 'tests'}{os.pathsep}{REPO_ROOT}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    with open(root / (log or f"{stage}.log"), "ab") as out:
        return subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


def fit(
    root: Path,
    stage: str,
    *,
    at_step: int = -1,
    during: str = "step",
    ckpt_path: str | None = None,
    kill_after_s: float | None = None,
    extra: tuple[str, ...] = (),
    callbacks: tuple[dict, ...] = (),
    log: str | None = None,
) -> int:
    """One ``lit-rlhf fit`` process in ``root``; returns its exit code (-9 when SIGKILLed)."""
    process = start(
        root, stage, at_step=at_step, during=during, ckpt_path=ckpt_path, extra=extra, callbacks=callbacks, log=log
    )
    if kill_after_s is not None:
        try:
            return process.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    return process.wait(timeout=RUN_TIMEOUT_S)


#: (case, what it measured) of every case that ran, printed as the suite's summary table.
SUMMARY: list[tuple[str, str]] = []


class SummaryTable:
    """A pytest plugin registered by this module: prints SUMMARY after the run (``-m slow``)."""

    def pytest_terminal_summary(self, terminalreporter):
        if not SUMMARY:
            return
        width = max(len(case) for case, _ in SUMMARY)
        terminalreporter.section("fault suite: what each case measured")
        for case, measured in SUMMARY:
            terminalreporter.write_line(f"{case:<{width}}  {measured}")


@pytest.fixture(scope="module", autouse=True)
def summary_table(request):
    plugin = SummaryTable()
    if not request.config.pluginmanager.is_registered(plugin):
        request.config.pluginmanager.register(plugin, "fault-summary-table")
    yield


def tail(line: str, n: int = 110) -> str:
    """The end of a one-line message (the part after the long temporary paths)."""
    return line if len(line) <= n else "..." + line[-n:]


def measured(case: str, text: str) -> None:
    SUMMARY.append((case, text))
    print(f"{case}: {text}")


def final_steps(root: Path, stage: str) -> dict[int, dict]:
    """The metrics of every step; a step the killed run made and the resumed one redid counts as redone."""
    rows = {}
    for line in (root / f"{stage}_steps.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


def exported_weights(root: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(root / "runs" / stage / "model" / "model.safetensors")


def assert_same_run(root: Path, reference: Path, stage: str) -> None:
    expected, got = final_steps(reference, stage), final_steps(root, stage)
    assert got == expected, f"{stage}: per-step metrics differ after resume"
    a, b = exported_weights(root, stage), exported_weights(reference, stage)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    case = test[test.index("[") + 1 : -1] if "[" in test else test.removeprefix("test_")[:40]
    measured(f"0 kill+resume {case}", f"{stage}: {len(got)} steps compared, largest exported-weight difference {worst}")
    assert worst == 0.0, f"{stage}: exported weights differ by up to {worst}"
    if stage == "rm":
        config = json.loads((root / "runs/rm/model/config.json").read_text())
        assert config["reward_bias"] == json.loads((reference / "runs/rm/model/config.json").read_text())["reward_bias"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs of every stage, and how long each took."""
    root = workdir(tmp_path_factory.mktemp("straight"))
    durations = {}
    for stage in STAGES:
        started = time.monotonic()
        assert fit(root, stage) == 0, (root / f"{stage}.log").read_text()[-3000:]
        durations[stage] = time.monotonic() - started
    return root, durations


@pytest.mark.parametrize(
    "stage, at_step, during",
    [
        ("sft", 3, "step"),  # mid-epoch
        ("sft", 5, "checkpoint"),  # inside the save after the epoch's last step, before its validation
        ("sft", 5, "validation"),  # in the epoch's validation, after the last step's checkpoint: resume must validate
        ("rm", 3, "checkpoint"),  # inside a checkpoint save mid-epoch
        ("ppo", 4, "step"),  # between two rollouts
        ("ppo", 2, "checkpoint"),  # inside the save after the first rollout
    ],
    ids=[
        "sft-mid-epoch",
        "sft-in-checkpoint-at-epoch-end",
        "sft-in-epoch-end-validation",
        "rm-in-checkpoint",
        "ppo-between-rollouts",
        "ppo-in-checkpoint",
    ],
)
def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(straight, tmp_path, stage, at_step, during):
    reference, _ = straight
    root = workdir(tmp_path)
    assert fit(root, stage, at_step=at_step, during=during) == -signal.SIGKILL
    assert fit(root, stage, ckpt_path="last") == 0, (root / f"{stage}.log").read_text()[-3000:]
    assert_same_run(root, reference, stage)


def test_kill_inside_the_export_keeps_the_previous_model_and_resume_writes_the_new_one(straight, tmp_path):
    reference, _ = straight
    root = workdir(tmp_path)
    previous = root / "runs/sft/model"
    shutil.copytree(SANDBOX / "base_model", previous)  # the model an earlier run exported
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    assert fit(root, "sft", at_step=0, during="export") == -signal.SIGKILL  # dies inside save_pretrained
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before, "the previous export was touched"
    from lit_rlhf.models.loading import load_causal_lm

    load_causal_lm(str(previous), trainable=False)  # still a whole model

    assert fit(root, "sft", ckpt_path="last") == 0, (root / "sft.log").read_text()[-3000:]
    assert_same_run(root, reference, "sft")
    assert (previous / "lit_rlhf_export.json").is_file()
    assert not [p for p in previous.parent.iterdir() if p.name.startswith(".model.")], (
        "a temporary export was left behind"
    )


@pytest.mark.parametrize("stage, seed", [("sft", 1), ("rm", 2), ("ppo", 3)])
def test_killed_at_a_random_moment_and_resumed_ends_like_the_uninterrupted_run(straight, tmp_path, stage, seed):
    reference, durations = straight
    root = workdir(tmp_path)
    # Somewhere after the first third of the run: inside a step, a checkpoint write, validation or the export.
    delay = random.Random(seed).uniform(0.3, 0.8) * durations[stage]
    code = fit(root, stage, kill_after_s=delay)
    if code != 0:
        assert code == -signal.SIGKILL
        assert fit(root, stage, ckpt_path="last") == 0, (root / f"{stage}.log").read_text()[-3000:]
    assert_same_run(root, reference, stage)


# ------------------------------------------------------------------------------------------------
# Issue 25: NaN guard, resume options, the export swap, locks, full and read-only disks, messages, progress, precision.


def stopped_lines(root: Path, log: str, prefix: str) -> list[str]:
    return [line for line in (root / log).read_text().splitlines() if line.startswith(prefix)]


def all_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=False, map_location="cpu")["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_nan_stops_before_the_export_and_keeps_finite_checkpoints(tmp_path, stage):
    root = workdir(tmp_path)
    previous = root / f"runs/{stage}/model"
    shutil.copytree(SANDBOX / "base_model", previous)  # a good model an earlier run exported
    code = fit(root, stage, extra=("--model.init_args.optimizer.learning_rate", "1000"))
    lines = stopped_lines(root, f"{stage}.log", "lit-rlhf: stopped:")
    checkpoints = sorted((root / f"runs/{stage}/checkpoints").glob("*.ckpt"))
    finite = all(all_finite(p) for p in checkpoints)
    untouched = not (previous / "lit_rlhf_export.json").exists()
    measured(
        f"1 nan-{stage}-lr-1000",
        f"exit {code}, {len(lines)} stop line(s), {len(checkpoints)} checkpoint(s) all finite: {finite}, "
        f"previous export untouched: {untouched}",
    )
    assert code == 3 and len(lines) == 1 and "NaN or inf" in lines[0]
    assert finite and untouched
    assert "Traceback" not in (root / f"{stage}.log").read_text()


def test_explicit_checkpoint_path_resume_applies_the_changed_learning_rate(tmp_path):
    root = workdir(tmp_path)
    assert fit(root, "sft", at_step=3, during="step") == -signal.SIGKILL
    explicit = str(root / "runs/sft/checkpoints/last.ckpt")
    assert (
        fit(
            root,
            "sft",
            ckpt_path=explicit,
            extra=("--model.init_args.optimizer.learning_rate", "1e-05"),
            log="resume.log",
        )
        == 0
    )
    final = torch.load(root / "runs/sft/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    lr = final["optimizer_states"][0]["param_groups"][0]["initial_lr"]
    lines = stopped_lines(root, "resume.log", "lit-rlhf: resuming from")
    measured(
        "2 explicit-ckpt-path-new-lr",
        f"resumed with initial_lr {lr:g} (config 1e-05, checkpoint 0.002); printed: "
        f"{tail(lines[0], 80) if lines else None}",
    )
    assert lr == pytest.approx(1e-5)
    assert len(lines) == 1 and "learning_rate = 1e-05 (checkpoint: 0.002)" in lines[0]


def test_kill_between_the_export_renames_is_recovered_by_the_next_stage(tmp_path):
    root = workdir(tmp_path)
    target = root / "runs/sft/model"
    shutil.copytree(SANDBOX / "base_model", target)
    assert fit(root, "sft", at_step=0, during="swap") == -signal.SIGKILL
    left = sorted(p.name.split("-")[0] for p in target.parent.iterdir() if p.name.startswith(".model."))
    missing = not target.exists()
    code = fit(root, "rm", extra=("--model.init_args.model", "runs/sft/model", "--model.init_args.tokenizer", "null"))
    restored = stopped_lines(root, "rm.log", "lit-rlhf: ")
    measured(
        "3 kill-between-export-renames",
        f"after the kill: target missing {missing}, temporaries {left}; RM stage reading it: exit {code}, "
        f"{tail(restored[0], 90) if restored else 'no note'}",
    )
    assert missing and left == [".model.old", ".model.tmp"]
    assert code == 0 and any("restored the complete new export" in line for line in restored)
    assert (target / "lit_rlhf_export.json").is_file()


def test_a_second_run_on_the_same_directories_meets_one_line_naming_the_first(tmp_path):
    root = workdir(tmp_path)
    release = root / "release"
    hold = {"class_path": "fault_support.HoldAtStep", "init_args": {"release": str(release), "at_step": 1}}
    first = start(root, "sft", log="first.log", name="first", callbacks=(hold,))
    lock = root / "runs/sft/.lit-rlhf-lock.checkpoints"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (root / "sft_steps.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the first run is training (held after its first step until the second run has ended)
    second = start(root, "sft", log="second.log", name="second")
    second_code = second.wait(timeout=RUN_TIMEOUT_S)
    release.write_text("go")
    first_code = first.wait(timeout=RUN_TIMEOUT_S)
    errors = stopped_lines(root, "second.log", "lit-rlhf: error:")
    measured(
        "4 two-runs-one-directory",
        f"first exit {first_code}, second exit {second_code} with {len(errors)} line(s) naming PID "
        f"{first.pid}: {bool(errors) and f'PID {first.pid}' in errors[0]}; checkpoints: "
        f"{sorted(p.name for p in (root / 'runs/sft/checkpoints').iterdir())}",
    )
    assert lock.is_file()
    assert first_code == 0 and second_code == 2
    assert len(errors) == 1 and f"PID {first.pid}" in errors[0] and "in use by another run" in errors[0]
    assert not list((root / "runs/sft/checkpoints").glob("last-v*.ckpt"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount a tmpfs of the requested size (root only); skipped where mounting is not allowed."""
    mounted = []

    def mount(path: Path, size: int, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
            capture_output=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_never_leaves_a_truncated_checkpoint(straight, tmp_path, small_tmpfs):
    import zipfile

    reference, _ = straight
    size = (reference / "runs/sft/checkpoints/last.ckpt").stat().st_size
    root = workdir(tmp_path)
    checkpoints = small_tmpfs(root / "runs/sft/checkpoints", int(size * 2.5))  # room for two checkpoints, not three
    code = fit(root, "sft")
    files = sorted(checkpoints.glob("*.ckpt"))
    truncated = [p.name for p in files if not zipfile.is_zipfile(p)]
    errors = stopped_lines(root, "sft.log", "lit-rlhf: error:")
    temporaries = [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
    measured(
        "5 full-disk-checkpoint",
        f"exit {code}, {len(errors)} line(s) ({tail(errors[0], 140) if errors else ''}), checkpoints "
        f"{[p.name for p in files]}, truncated {truncated}, temporaries left {temporaries}",
    )
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0]
    assert files and not truncated and not temporaries
    assert "Traceback" not in (root / "sft.log").read_text()


def test_a_read_only_checkpoint_directory_is_found_before_the_first_step(tmp_path, small_tmpfs):
    root = workdir(tmp_path)
    small_tmpfs(root / "runs/sft/checkpoints", 1 << 20, "ro")
    started = time.monotonic()
    code = fit(root, "sft")
    seconds = time.monotonic() - started
    errors = stopped_lines(root, "sft.log", "lit-rlhf: error:")
    steps = len((root / "sft_steps.jsonl").read_text().splitlines()) if (root / "sft_steps.jsonl").exists() else 0
    measured(
        "5 read-only-checkpoint-dir",
        f"exit {code} after {seconds:.0f} s and {steps} training steps, {len(errors)} line: "
        f"{tail(errors[0]) if errors else ''}",
    )
    assert code == 2 and steps == 0 and len(errors) == 1 and "Read-only file system" in errors[0]


def test_resuming_from_a_truncated_last_checkpoint_is_one_line(tmp_path):
    root = workdir(tmp_path)
    assert fit(root, "sft", at_step=3, during="step") == -signal.SIGKILL
    last = root / "runs/sft/checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a copy cut short
    code = fit(root, "sft", ckpt_path="last", log="resume.log")
    text = (root / "resume.log").read_text()
    errors = stopped_lines(root, "resume.log", "lit-rlhf: error:")
    measured(
        "5 truncated-last-ckpt-resume",
        f"exit {code}, {len(errors)} line, traceback: {'Traceback' in text}: {tail(errors[0], 150) if errors else ''}",
    )
    assert code == 2 and len(errors) == 1 and "last.ckpt is truncated" in errors[0] and "Traceback" not in text


def test_ppo_with_too_few_prompts_fails_before_its_models_load(tmp_path):
    root = workdir(tmp_path)
    (root / "few.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    code = fit(root, "ppo", extra=("--data.init_args.prompts", "few.jsonl"))
    text = (root / "ppo.log").read_text()
    errors = stopped_lines(root, "ppo.log", "lit-rlhf: error:")
    measured(
        "6 ppo-too-few-prompts",
        f"exit {code}, {len(text.splitlines())} output lines, {len(errors)} error line: {errors[0] if errors else ''}",
    )
    assert code == 2 and len(errors) == 1 and "2 prompts in few.jsonl cannot fill one rollout of 4 prompts" in errors[0]
    assert "Total params" not in text  # no model summary: nothing was loaded


def test_progress_and_metrics_reach_a_log_file_before_the_run_ends(tmp_path):
    root = workdir(tmp_path)
    csv = {"class_path": "lit_rlhf.reliability.progress.PlainProgress", "init_args": {"every_n_steps": 2}}
    code = fit(
        root,
        "sft",
        at_step=7,
        during="step",
        callbacks=(csv,),
        extra=(
            "--trainer.logger",
            json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}),
            "--trainer.log_every_n_steps",
            "1",
        ),
    )
    lines = stopped_lines(root, "sft.log", "lit-rlhf: step ")
    rows = sum(len(p.read_text().splitlines()) - 1 for p in (root / "logs").rglob("metrics.csv"))
    measured(
        "7 progress-in-a-log-file",
        f"killed at step 7 (exit {code}): {len(lines)} progress lines in the log ({lines[0] if lines else ''}), "
        f"{rows} CSV rows flushed",
    )
    assert code == -signal.SIGKILL
    assert len(lines) >= 3 and all("steps/s" in line or "s/step" in line for line in lines) and "ETA" in lines[-1]
    assert rows >= 4


def test_precision_auto_fits_this_machine(tmp_path):
    from lit_rlhf.precision import bf16_native

    root = workdir(tmp_path)
    code = fit(root, "sft", extra=("--trainer.precision", "auto", "--trainer.max_steps", "2"))
    text = (root / "sft.log").read_text()
    native = bf16_native("cpu")
    chosen = "bf16-mixed" if "bfloat16 Automatic Mixed Precision" in text else "32-true"
    emulated = [line for line in text.splitlines() if "no native bfloat16" in line]
    measured(
        "8 precision-auto",
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 native {native}: auto chose {chosen}, "
        f"exit {code}, emulation lines {len(emulated)} (the AVX2 engine benchmark cannot be re-run on this machine)",
    )
    assert code == 0
    assert chosen == ("bf16-mixed" if native else "32-true")
    assert len(emulated) == 0
