"""An export of human judgments trains the RM stage with the shipped configs/rm.yaml, only the data paths changed."""

from __future__ import annotations

import json
import os

from label_support import synthetic_samples, write_samples

from lit_rlhf.cli import main
from lit_rlhf.label.judgments import Judgment
from lit_rlhf.label.storage import LabelStore
from lit_rlhf.sandbox.paths import BASE_MODEL_DIR


def test_exported_rankings_train_the_shipped_rm_config(in_scratch_dir, capsys):
    store = LabelStore("labels.db", overlap=2)
    store.import_samples(str(write_samples(in_scratch_dir / "samples.jsonl", synthetic_samples(12))))
    for name in ("ann", "bob"):
        store.add_labeler(name)
        while (item_id := store.next_item(name)) is not None:
            if item_id == 3 and name == "bob":
                store.submit(name, item_id, None)  # a skip: left out of the export
                continue
            ranking = [[0], [1, 2], [3]] if name == "ann" else [[0], [2], [1], [3]]  # ann marks a tie
            store.submit(name, item_id, Judgment(ranking, [7, 4, 4, 1], [[], ["hallucination"], [], []]))
    main(
        [
            "label",
            "export",
            "--db",
            "labels.db",
            "--out",
            "runs/comparisons/train.jsonl",
            "--val_out",
            "runs/comparisons/val.jsonl",
            "--val_fraction",
            "0.25",
        ]
    )
    assert "left out: 1 skipped judgments" in capsys.readouterr().out
    train = [json.loads(line) for line in open("runs/comparisons/train.jsonl")]
    assert any(r["ranks"] == [0, 1, 1, 2] for r in train)  # ties arrive as equal ranks

    os.makedirs("runs/sft")
    os.symlink(BASE_MODEL_DIR, "runs/sft/model")  # the model the shipped config starts from
    demos = [json.loads(line) for line in open("lit_rlhf/sandbox/assets/data/sft_train.jsonl")][:50]
    write_samples(in_scratch_dir / "demos.jsonl", demos)  # fewer demonstrations to centre on: a faster test
    # The shipped config, pointed at the export and at fewer demonstrations; only data paths change
    # (and the logger: a CSV file starts faster than an offline wandb run).
    main(
        [
            "fit",
            "--config",
            "configs/rm.yaml",
            "--data.init_args.train",
            "runs/comparisons/train.jsonl",
            "--data.init_args.val",
            "runs/comparisons/val.jsonl",
            "--data.init_args.center_on",
            "demos.jsonl",
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            "runs/rm",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    config = json.loads(open("runs/rm/model/config.json").read())
    assert config["reward_bias"] != 0.0  # trained, centred and written where PPO reads it
    assert os.path.exists("runs/rm/model/model.safetensors")
