"""Every bad input a user can give the ``lit-rlhf`` command ends the same way: exit code 2, one line
``lit-rlhf: error: ...`` naming the option, the file and record, or the directory, no traceback, and no
training started (no checkpoint, no exported model).

One table of cases across SFT, RM, PPO, ``sample``, ``sandbox label`` and the CLI's own parsing; each
runs the command in-process. A case is (id, command arguments, files to write first, expected text).
"""

from __future__ import annotations

import json
from pathlib import Path

# Imported at collection, Lightning's log handlers write to the session's stderr, not to the capsys stream of
# whichever case imported it first (closed when that case ends: later cases would print "--- Logging error ---").
import lightning.pytorch  # noqa: F401, E402
import pytest

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
SFT = ["fit", "--config", "configs/sft.yaml", *TINY]
RM = ["fit", "--config", "configs/rm.yaml", *TINY, "--data.init_args.train", "rm.jsonl", "--data.init_args.val", "null"]
PPO = [
    "fit",
    "--config",
    "configs/ppo.yaml",
    "--model.init_args.policy",
    f"{SANDBOX}/base_model",
    "--model.init_args.reward_model",
    f"{SANDBOX}/base_model",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]
DPO = [
    "fit",
    "--config",
    "configs/dpo.yaml",
    "--model.init_args.policy",
    f"{SANDBOX}/base_model",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--data.init_args.train",
    f"{SANDBOX}/data/prompts_train.jsonl",
]
GOOD_SFT = '{"prompt": "say hi", "response": "hi"}\n'
GOOD_RM = '{"prompt": "say hi", "responses": ["hi", "no", "bye"]}\n'
LONG = json.dumps({"prompt": "x" * 400, "response": "y" * 400}) + "\n"
CHAT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}


def jsonl(*records) -> str:
    return "".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records)


def sft_train(name: str) -> list[str]:
    return [*SFT, "--data.init_args.train", name, "--data.init_args.val", "null"]


# (id, arguments, files {name: text or bytes}, expected text of the one error line)
CASES = [
    # --- the CLI's own parsing: key, YAML file, closest valid key, no usage dump -------------------------
    (
        "yaml-typo",
        [*SFT, "--config", "typo.yaml"],
        {"typo.yaml": "data:\n  init_args:\n    batch_sizee: 8\n"},
        "typo.yaml: data.init_args.batch_sizee: unknown option of SFTDataModule; did you mean 'batch_size'?",
    ),
    (
        "yaml-not-an-int",
        [*SFT, "--config", "bad.yaml"],
        {"bad.yaml": "data:\n  init_args:\n    batch_size: eight\n"},
        "bad.yaml: data.init_args.batch_size: expected an integer, got 'eight'",
    ),
    (
        "yaml-float-for-int",
        [*SFT, "--config", "bad.yaml"],
        {"bad.yaml": "data:\n  init_args:\n    max_length: 12.5\n"},
        "bad.yaml: data.init_args.max_length: expected an integer",
    ),
    (
        "yaml-model-typo",
        [*SFT, "--config", "m.yaml"],
        {"m.yaml": "model:\n  init_args:\n    learning_ratte: 0.1\n"},
        "m.yaml: model.init_args.learning_ratte: unknown option of SFTModule; did you mean 'optimizer.learning_rate'?",
    ),
    (
        "rm-yaml-typo",
        [*RM, "--config", "r.yaml"],
        {"r.yaml": "model:\n  init_args:\n    outptu_dir: x\n", "rm.jsonl": GOOD_RM},
        "r.yaml: model.init_args.outptu_dir: unknown option of RewardModule; did you mean 'output_dir'?",
    ),
    (
        "ppo-yaml-typo",
        [*PPO, "--config", "p.yaml"],
        {"p.yaml": "data:\n  init_args:\n    promptz: x.jsonl\n"},
        "p.yaml: data.init_args.promptz: unknown option of PromptDataModule; did you mean 'prompts'?",
    ),
    (
        "flag-typo-trainer",
        [*SFT, "--trainer.max_epochz", "3"],
        {},
        "--trainer.max_epochz: unknown option; did you mean '--trainer.max_epochs'?",
    ),
    (
        "flag-typo-model",
        [*SFT, "--model.init_args.learning_ratee", "3"],
        {},
        "model.init_args.learning_ratee: unknown option of SFTModule; did you mean 'optimizer.learning_rate'?",
    ),
    # --- keys that moved into a settings group (settings.MOVED_KEYS): one line naming the new key ---------
    (
        "moved-flag-sft",
        [*SFT, "--model.init_args.learning_rate", "1e-4"],
        {},
        "model.init_args.learning_rate: moved to model.init_args.optimizer.learning_rate",
    ),
    (
        "moved-yaml-sft",
        [*SFT, "--config", "old.yaml"],
        {"old.yaml": "model:\n  init_args:\n    learning_rate: 1.0e-4\n"},
        "old.yaml: model.init_args.learning_rate: moved to model.init_args.optimizer.learning_rate",
    ),
    (
        "moved-yaml-rm",
        [*RM, "--config", "old.yaml"],
        {"old.yaml": "model:\n  init_args:\n    min_lr_ratio: 0.5\n", "rm.jsonl": GOOD_RM},
        "old.yaml: model.init_args.min_lr_ratio: moved to model.init_args.optimizer.min_lr_ratio",
    ),
    (
        "moved-flag-rm-betas",
        [*RM, "--model.init_args.betas", "[0.9, 0.99]"],
        {"rm.jsonl": GOOD_RM},
        "model.init_args.betas: moved to model.init_args.optimizer.betas",
    ),
    (
        "moved-flag-dpo",
        [*DPO, "--model.init_args.warmup_steps", "5"],
        {},
        "model.init_args.warmup_steps: moved to model.init_args.optimizer.warmup_steps",
    ),
    (
        "moved-yaml-dpo",
        [*DPO, "--config", "old.yaml"],
        {"old.yaml": "model:\n  init_args:\n    weight_decay: 0.1\n"},
        "old.yaml: model.init_args.weight_decay: moved to model.init_args.optimizer.weight_decay",
    ),
    # --- a bad value inside a settings group: the group's key and its range ------------------------------
    (
        "group-lr-neg",
        [*SFT, "--model.init_args.optimizer.learning_rate", "-1"],
        {},
        "optimizer.learning_rate must be > 0, got -1",
    ),
    (
        "group-lr-yaml",
        [*RM, "--config", "o.yaml"],
        {"o.yaml": "model:\n  init_args:\n    optimizer: {learning_rate: 0}\n", "rm.jsonl": GOOD_RM},
        "optimizer.learning_rate must be > 0, got 0",
    ),
    (
        "group-min-lr-ratio",
        [*DPO, "--model.init_args.optimizer.min_lr_ratio", "1.5"],
        {},
        "optimizer.min_lr_ratio must be in [0, 1], got 1.5",
    ),
    (
        "group-beta-1",
        [*SFT, "--model.init_args.optimizer.betas", "[0.9, 1.0]"],
        {},
        "optimizer.betas[1] must be in [0, 1), got 1",
    ),
    (
        "group-typo-flag",
        [*SFT, "--model.init_args.optimizer.learning_ratte", "1"],
        {},
        "model.init_args.optimizer.learning_ratte: unknown option of SFTModule; did you mean "
        "'optimizer.learning_rate'?",
    ),
    (
        "group-typo-yaml",
        [*SFT, "--config", "o.yaml"],
        {"o.yaml": "model:\n  init_args:\n    optimizer:\n      warmup_step: 3\n"},
        "o.yaml: model.init_args.optimizer.warmup_step: unknown option of SFTModule; did you mean "
        "'optimizer.warmup_steps'?",
    ),
    (
        "group-not-a-number",
        [*SFT, "--model.init_args.optimizer.learning_rate", "fast"],
        {},
        "model.init_args.optimizer.learning_rate: expected a number, got 'fast'",
    ),
    (
        "flag-not-an-int",
        [*SFT, "--data.init_args.batch_size", "x"],
        {},
        "data.init_args.batch_size: expected an integer, got 'x'",
    ),
    ("unknown-subcommand", ["fitt"], {}, "invalid choice: 'fitt'"),
    ("missing-config-file", ["fit", "--config", "nope.yaml"], {}, "nope.yaml"),
    # --- numeric options of the data modules, checked at construction --------------------------------
    ("sft-batch-size-0", [*SFT, "--data.init_args.batch_size", "0"], {}, "data.batch_size must be >= 1, got 0"),
    ("sft-batch-size-neg", [*SFT, "--data.init_args.batch_size", "-4"], {}, "data.batch_size must be >= 1, got -4"),
    ("sft-max-length-neg", [*SFT, "--data.init_args.max_length", "-5"], {}, "data.max_length must be >= 1, got -5"),
    ("sft-max-length-0", [*SFT, "--data.init_args.max_length", "0"], {}, "data.max_length must be >= 1, got 0"),
    (
        "sft-val-fraction-1.5",
        [*SFT, "--data.init_args.val", "null", "--data.init_args.val_fraction", "1.5"],
        {},
        "data.val_fraction must be in [0, 1), got 1.5",
    ),
    (
        "sft-val-fraction-1",
        [*SFT, "--data.init_args.val", "null", "--data.init_args.val_fraction", "1"],
        {},
        "data.val_fraction must be in [0, 1), got 1",
    ),
    (
        "sft-val-fraction-neg",
        [*SFT, "--data.init_args.val", "null", "--data.init_args.val_fraction", "-0.1"],
        {},
        "data.val_fraction must be in [0, 1), got -0.1",
    ),
    (
        "sft-val-and-fraction",
        [*SFT, "--data.init_args.val_fraction", "0.1"],
        {},
        "data.val and data.val_fraction are both set",
    ),
    ("sft-num-workers-neg", [*SFT, "--data.init_args.num_workers", "-1"], {}, "data.num_workers must be >= 0, got -1"),
    ("sft-seed-neg", [*SFT, "--data.init_args.seed", "-3"], {}, "data.seed must be >= 0, got -3"),
    (
        "rm-batch-size-0",
        [*RM, "--data.init_args.batch_size", "0"],
        {"rm.jsonl": GOOD_RM},
        "data.batch_size must be >= 1, got 0",
    ),
    (
        "rm-max-length-neg",
        [*RM, "--data.init_args.max_length", "-5"],
        {"rm.jsonl": GOOD_RM},
        "data.max_length must be >= 1, got -5",
    ),
    (
        "rm-val-fraction-1.5",
        [*RM, "--data.init_args.val_fraction", "1.5"],
        {"rm.jsonl": GOOD_RM},
        "data.val_fraction must be in [0, 1), got 1.5",
    ),
    (
        "rm-num-workers-neg",
        [*RM, "--data.init_args.num_workers", "-2"],
        {"rm.jsonl": GOOD_RM},
        "data.num_workers must be >= 0, got -2",
    ),
    (
        "ppo-max-prompt-length-0",
        [*PPO, "--data.init_args.max_prompt_length", "0"],
        {},
        "data.max_prompt_length must be >= 1, got 0",
    ),
    (
        "ppo-max-ptx-length-neg",
        [*PPO, "--data.init_args.max_ptx_length", "-1"],
        {},
        "data.max_ptx_length must be >= 1, got -1",
    ),
    ("ppo-ptx-ratio-neg", [*PPO, "--data.init_args.ptx_ratio", "-1"], {}, "data.ptx_ratio must be >= 0, got -1"),
    (
        "ppo-val-batch-size-0",
        [*PPO, "--data.init_args.val_batch_size", "0"],
        {},
        "data.val_batch_size must be >= 1, got 0",
    ),
    # --- SFT records: the file, the record and the field ----------------------------------------------
    ("sft-missing-file", sft_train("nope.jsonl"), {}, "nope.jsonl: file not found"),
    ("sft-directory", sft_train("adir"), {"adir/x.jsonl": GOOD_SFT}, "adir: is a directory"),
    ("sft-unknown-suffix", sft_train("t.xml"), {"t.xml": GOOD_SFT}, "t.xml: unknown file type '.xml'"),
    ("sft-empty-file", sft_train("e.jsonl"), {"e.jsonl": ""}, "e.jsonl: contains no records"),
    ("sft-bad-json", sft_train("t.jsonl"), {"t.jsonl": GOOD_SFT + "{oops\n"}, "t.jsonl: record 2: not valid JSON"),
    (
        "sft-not-an-object",
        sft_train("t.jsonl"),
        {"t.jsonl": GOOD_SFT + "[1, 2]\n"},
        "t.jsonl: record 2: expected a JSON object, got list",
    ),
    (
        "sft-empty-response",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl(GOOD_SFT, {"prompt": "a", "response": " "})},
        "t.jsonl: record 2: field 'response': is empty",
    ),
    (
        "sft-null-response",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl(GOOD_SFT, {"prompt": "a", "response": None})},
        "t.jsonl: record 2: field 'response': is null; expected a string",
    ),
    (
        "sft-missing-response",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl(GOOD_SFT, {"prompt": "a"})},
        "t.jsonl: record 2: field 'response': missing (record has fields: prompt)",
    ),
    (
        "sft-int-response-json",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl(GOOD_SFT, {"prompt": "a", "response": 42})},
        "t.jsonl: record 2: field 'response': expected a string, got int",
    ),
    (
        "sft-messages-and-prompt",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl(GOOD_SFT, {"prompt": "a", "response": "b", "messages": list(CHAT)})},
        "t.jsonl: record 2: has both 'messages' and 'prompt'; give one format per record",
    ),
    (
        "sft-non-utf8",
        sft_train("t.jsonl"),
        {"t.jsonl": GOOD_SFT.encode() + b'{"prompt": "\xff", "response": "b"}\n'},
        "t.jsonl: record 2: is not UTF-8 text (byte 0xff",
    ),
    (
        "sft-non-utf8-txt",
        sft_train("t.txt"),
        {"t.txt": b"fine line\n\xfe bad line\n"},
        "t.txt: record 2: is not UTF-8 text (byte 0xfe",
    ),
    (
        "sft-ragged-csv",
        sft_train("t.csv"),
        {"t.csv": "prompt,response\na,b\nc,d,e\n"},
        "t.csv: record 2: has 3 cells but the header has 2 columns (prompt, response)",
    ),
    (
        "sft-no-known-fields",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl({"question": "a", "answer": "b"})},
        "t.jsonl: record 1:",
    ),
    (
        "sft-messages-order",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl({"messages": [CHAT[1], CHAT[0]]})},
        "t.jsonl: record 1: field 'messages[0].role': roles out of order",
    ),
    (
        "sft-messages-empty",
        sft_train("t.jsonl"),
        {"t.jsonl": jsonl({"messages": []})},
        "t.jsonl: record 1: field 'messages'",
    ),
    (
        "sft-too-long-error",
        [*sft_train("t.jsonl"), "--data.init_args.truncation", "error"],
        {"t.jsonl": jsonl(GOOD_SFT, LONG)},
        "t.jsonl: record 2: example is 8",
    ),
    (
        "sft-val-all-too-long",
        [
            *SFT,
            "--data.init_args.train",
            "t.jsonl",
            "--data.init_args.val",
            "v.jsonl",
            "--data.init_args.truncation",
            "drop",
        ],
        {"t.jsonl": GOOD_SFT, "v.jsonl": LONG},
        "no validation examples left in v.jsonl",
    ),
    (
        "sft-val-missing",
        [*SFT, "--data.init_args.train", "t.jsonl", "--data.init_args.val", "v.jsonl"],
        {"t.jsonl": GOOD_SFT},
        "v.jsonl: file not found",
    ),
    # --- RM records, center_on read before training ---------------------------------------------------
    ("rm-missing-train", RM, {}, "rm.jsonl: file not found"),
    (
        "rm-one-response",
        RM,
        {"rm.jsonl": jsonl({"prompt": "p", "responses": ["a"]})},
        "rm.jsonl: record 1: field 'responses': needs at least 2 responses",
    ),
    (
        "rm-repeated",
        RM,
        {"rm.jsonl": jsonl({"prompt": "p", "responses": ["a", "b", "a"]})},
        "rm.jsonl: record 1: field 'responses[2]': repeats responses[0]",
    ),
    (
        "rm-ranks-length",
        RM,
        {"rm.jsonl": jsonl({"prompt": "p", "responses": ["a", "b"], "ranks": [0]})},
        "rm.jsonl: record 1: field 'ranks': has 1 ranks for 2 responses",
    ),
    (
        "rm-all-tied",
        RM,
        {"rm.jsonl": jsonl({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]})},
        "rm.jsonl: record 1: field 'ranks': all responses are tied",
    ),
    (
        "rm-chosen-equals-rejected",
        RM,
        {"rm.jsonl": jsonl({"prompt": "p", "chosen": "a", "rejected": "a"})},
        "rm.jsonl: record 1: field 'rejected': is identical to 'chosen'",
    ),
    (
        "rm-both-formats",
        RM,
        {"rm.jsonl": jsonl({"prompt": "p", "responses": ["a", "b"], "chosen": "a", "rejected": "b"})},
        "rm.jsonl: record 1: has both 'responses'",
    ),
    (
        "rm-non-utf8",
        RM,
        {"rm.jsonl": GOOD_RM.encode() + b'{"prompt": "\xc3", "responses": ["a", "b"]}\n'},
        "rm.jsonl: record 2: is not UTF-8 text",
    ),
    (
        "rm-center-on-missing",
        [*RM, "--data.init_args.center_on", "demos.jsonl"],
        {"rm.jsonl": GOOD_RM},
        "demos.jsonl: file not found",
    ),
    (
        "rm-center-on-bad-record",
        [*RM, "--data.init_args.center_on", "demos.jsonl"],
        {"rm.jsonl": GOOD_RM, "demos.jsonl": jsonl({"prompt": "a", "response": None})},
        "demos.jsonl: record 1: field 'response': is null",
    ),
    (
        "rm-val-all-too-long",
        [
            *RM,
            "--data.init_args.val",
            "v.jsonl",
            "--data.init_args.truncation",
            "drop",
            "--data.init_args.max_length",
            "20",
        ],
        {"rm.jsonl": GOOD_RM, "v.jsonl": jsonl({"prompt": "x" * 40, "responses": ["a", "b"]})},
        "no validation comparisons left in v.jsonl",
    ),
    # --- PPO data: prompts, ptx and validation files are read before the first rollout -----------------
    ("ppo-prompts-missing", [*PPO, "--data.init_args.prompts", "p.jsonl"], {}, "p.jsonl: file not found"),
    ("ppo-ptx-missing", [*PPO, "--data.init_args.ptx_text", "pt.txt"], {}, "pt.txt: file not found"),
    (
        "ppo-prompt-empty",
        [*PPO, "--data.init_args.prompts", "p.jsonl"],
        {"p.jsonl": jsonl({"prompt": ""})},
        "p.jsonl: record 1: field 'prompt': is empty",
    ),
    (
        "ppo-val-prompts-bad",
        [*PPO, "--data.init_args.val_prompts", "v.jsonl"],
        {"v.jsonl": jsonl({"prompt": 3})},
        "v.jsonl: record 1: field 'prompt': expected a string, got int",
    ),
    (
        "ppo-prompts-non-utf8",
        [*PPO, "--data.init_args.prompts", "p.jsonl"],
        {"p.jsonl": b'{"prompt": "\xff"}\n'},
        "p.jsonl: record 1: is not UTF-8 text",
    ),
    # --- model directories: empty, config only, truncated weights, no tokenizer ------------------------
    (
        "model-dir-empty",
        [*SFT, "--model.init_args.model", "m", "--model.init_args.tokenizer", "null"],
        "empty",
        "model directory 'm' is incomplete: it is empty",
    ),
    (
        "model-dir-config-only",
        [*SFT, "--model.init_args.model", "m", "--model.init_args.tokenizer", f"{SANDBOX}/tokenizer"],
        "config-only",
        "model directory 'm' is incomplete: no weights",
    ),
    (
        "model-dir-truncated",
        [*SFT, "--model.init_args.model", "m", "--model.init_args.tokenizer", f"{SANDBOX}/tokenizer"],
        "truncated",
        "model directory 'm' is incomplete: model.safetensors is truncated",
    ),
    (
        "model-dir-no-tokenizer",
        [*SFT, "--model.init_args.model", "m", "--model.init_args.tokenizer", "null"],
        "no-tokenizer",
        "model directory 'm' is incomplete: no tokenizer files",
    ),
    (
        "model-dir-marker-mismatch",
        [*SFT, "--model.init_args.model", "m", "--model.init_args.tokenizer", f"{SANDBOX}/tokenizer"],
        "marker",
        "model directory 'm' is incomplete: model.safetensors missing or cut short. It was written by "
        "`lit-rlhf fit --config configs/sft.yaml`",
    ),
    (
        "rm-model-dir-config-only",
        [*RM, "--model.init_args.model", "m", "--model.init_args.tokenizer", f"{SANDBOX}/tokenizer"],
        "config-only",
        "model directory 'm' is incomplete: no weights",
    ),
    # --- the other commands -----------------------------------------------------------------------------
    (
        "sample-k-1",
        [
            "sample",
            "--model",
            f"{SANDBOX}/base_model",
            "--prompts",
            f"{SANDBOX}/data/prompts_train.jsonl",
            "--out",
            "s.jsonl",
            "--k",
            "1",
        ],
        {},
        "k must be >= 2, got 1",
    ),
    (
        "sample-temperature-neg",
        [
            "sample",
            "--model",
            f"{SANDBOX}/base_model",
            "--prompts",
            f"{SANDBOX}/data/prompts_train.jsonl",
            "--out",
            "s.jsonl",
            "--temperature",
            "-1",
        ],
        {},
        "temperature must be >= 0, got -1",
    ),
    (
        "sample-model-empty",
        ["sample", "--model", "m", "--prompts", f"{SANDBOX}/data/prompts_train.jsonl", "--out", "s.jsonl"],
        "empty",
        "model directory 'm' is incomplete: it is empty",
    ),
    (
        "label-val-fraction",
        ["sandbox", "label", "--samples", "s.jsonl", "--out_dir", "c", "--val_fraction", "1.5"],
        {"s.jsonl": ""},
        "val_fraction must be in [0, 1), got 1.5",
    ),
]


def write_model_dir(kind: str, root: Path) -> None:
    """A broken copy of the sandbox base model in ``root/m``."""
    import shutil

    src = root / SANDBOX / "base_model"
    (root / "rm.jsonl").write_text(GOOD_RM)  # the RM case reads its data before it builds the model
    dst = root / "m"
    dst.mkdir()
    if kind == "empty":
        return
    shutil.copy(src / "config.json", dst / "config.json")
    if kind == "config-only":
        return
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if kind != "no-tokenizer":
            shutil.copy(src / name, dst / name)
    weights = (src / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(weights[: len(weights) // 2] if kind == "truncated" else weights)
    if kind == "marker":  # an export whose weights were cut short after it was written
        files = {p.name: p.stat().st_size + (1 if p.name == "model.safetensors" else 0) for p in dst.iterdir()}
        (dst / "lit_rlhf_export.json").write_text(
            json.dumps({"files": files, "command": "lit-rlhf fit --config configs/sft.yaml"})
        )


@pytest.mark.parametrize("args, files, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(in_scratch_dir, capsys, args, files, expected):
    if isinstance(files, str):
        write_model_dir(files, in_scratch_dir)
        files = {}
    for name, content in files.items():
        path = in_scratch_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("lit-rlhf: error:")]
    assert len(errors) == 1, err
    assert expected in errors[0]
    assert "Traceback" not in err and "usage:" not in err and "Namespace(" not in err
    for stage in ("sft", "rm", "ppo"):  # nothing trained, nothing exported
        assert not (in_scratch_dir / "runs" / stage / "checkpoints").exists()
        assert not (in_scratch_dir / "runs" / stage / "model").exists()


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_csv_numbers_are_text(tmp_path):
    from lit_rlhf.data.records import FieldMap, get_str, read_records

    path = tmp_path / "t.csv"
    path.write_text("prompt,response\nwhat is 6 times 7,42\n")
    (record,) = read_records(str(path))
    assert get_str(record, FieldMap(), "response") == "42"


def test_user_errors_share_one_base_class_and_the_cli_catches_it(monkeypatch, capsys):
    """Every error a user fixes derives from errors.UserError; the CLI prints any UserError in the exception
    chain (jsonargparse and commands wrap them) as one line with exit code 2, whatever its class."""
    import lit_rlhf.sampling
    from lit_rlhf.data.records import RecordError
    from lit_rlhf.errors import ConfigError, UserError
    from lit_rlhf.models.sources import ModelSourceError
    from lit_rlhf.recipes.stages import StageFailed
    from lit_rlhf.rewards.base import RewardError

    for cls in (ConfigError, RecordError, ModelSourceError, RewardError, StageFailed):
        assert issubclass(cls, UserError), cls

    class NewKindOfMistake(UserError):
        pass

    def fails(argv):
        try:
            raise NewKindOfMistake("widget 'w' must be blue; set colour: blue")
        except NewKindOfMistake as e:
            raise RuntimeError("wrapped by a library") from e

    monkeypatch.setattr(lit_rlhf.sampling, "main", fails)
    with pytest.raises(SystemExit) as exit_info:
        main(["sample"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "lit-rlhf: error: widget 'w' must be blue; set colour: blue"


def test_any_moved_key_entry_is_answered_where_the_class_has_its_new_group(in_scratch_dir, monkeypatch, capsys):
    """The stages append their moved keys to settings.MOVED_KEYS; the CLI answers each of them, on the command
    line or in a YAML file, but only for a class that takes the new key's group (SFT has no ``kl`` group)."""
    from lit_rlhf import settings

    monkeypatch.setitem(settings.MOVED_KEYS, "decay", "optimizer.weight_decay")
    monkeypatch.setitem(settings.MOVED_KEYS, "kl_coef", "kl.coef")
    (in_scratch_dir / "old.yaml").write_text("model:\n  init_args:\n    decay: 0.1\n")
    cases = [
        (
            ["--model.init_args.decay", "0.1"],
            "lit-rlhf: error: model.init_args.decay: moved to model.init_args.optimizer.weight_decay",
        ),
        (
            ["--config", "old.yaml"],
            "lit-rlhf: error: old.yaml: model.init_args.decay: moved to model.init_args.optimizer.weight_decay",
        ),
        (["--model.init_args.kl_coef", "0.1"], "lit-rlhf: error: model.init_args.kl_coef: unknown option of SFTModule"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main([*SFT, *args])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().startswith(expected), args
