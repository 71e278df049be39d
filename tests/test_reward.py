"""The reward-model stage: comparison records, group batching, reward reading, centering, and `lit-rlhf fit`."""

from __future__ import annotations

import csv
import json
import random
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, write_jsonl
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader

from lit_rlhf.data.batching import pad_sequences
from lit_rlhf.data.common import DropCounter
from lit_rlhf.data.comparisons import (
    RewardDataModule,
    collate_groups,
    encode_comparisons,
    encode_demonstrations,
    rank_share,
)
from lit_rlhf.data.records import FieldMap, RecordError, read_records
from lit_rlhf.models.heads import token_scores
from lit_rlhf.models.loading import load_scalar_model
from lit_rlhf.models.sources import ModelSourceError
from lit_rlhf.modules.reward import RewardModule, bias_from_sums


def encode(path, tokenizer, **options):
    options = {"max_length": 256, "truncation": "error", "on_invalid": "error", **options}
    counter = DropCounter("test")
    fields = FieldMap(options.pop("fields", {}))
    return encode_comparisons(read_records(str(path)), tokenizer, fields, counter=counter, **options), counter


@pytest.fixture
def module(tiny_dir):
    return RewardModule(model=str(tiny_dir / "config.json"), tokenizer=str(tiny_dir / "tokenizer"))


# ----------------------------------------------------------------------------------------------
# Loss through the collate path


MIXED = [
    {"prompt": "A:", "responses": ["w", "x", "y", "z"]},  # K=4, best first, no ranks
    {"prompt": "B:", "responses": ["p", "q", "r"], "ranks": [2, 0, 2]},  # K=3, a tie, worst listed first
    {"prompt": "C:", "chosen": "good", "rejected": "bad"},  # a pair
    {"prompt": "D:", "responses": list("abcdefghi"), "ranks": [0, 1, 1, 2, 3, 4, 4, 4, 5]},  # K=9, ties
]


def explicit_loss(rewards: list[float], records: list[dict]) -> torch.Tensor:
    """Mean over prompts of the mean over untied pairs of -log sigmoid(r_better - r_worse)."""
    losses, offset = [], 0
    for record in records:
        ranks = record.get("ranks") or (list(range(len(record["responses"]))) if "responses" in record else [0, 1])
        terms = [
            -F.logsigmoid(torch.tensor(rewards[offset + i] - rewards[offset + j]))
            for i in range(len(ranks))
            for j in range(len(ranks))
            if ranks[i] < ranks[j]
        ]
        losses.append(torch.stack(terms).mean())
        offset += len(ranks)
    return torch.stack(losses).mean()


def test_training_step_loss_equals_explicit_pairwise_formula(tmp_path, tiny_tokenizer, module):
    groups, _ = encode(write_jsonl(tmp_path / "c.jsonl", MIXED), tiny_tokenizer)
    batch = collate_groups(groups, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 + 3 + 2 + 9  # every response once, not 2 x pairs
    assert batch["group"].tolist() == [0] * 4 + [1] * 3 + [2] * 2 + [3] * 9
    rewards = [0.1 * ((7 * i) % 11) - 0.4 for i in range(18)]
    module.forward = lambda batch, centered=True: torch.tensor(rewards)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss_sum = module.training_step(batch, 0)
    # training_step returns the sum over prompts; the optimizer step divides by the step's prompt count.
    assert module._step_normalizer.item() == len(MIXED)
    torch.testing.assert_close(loss_sum / len(MIXED), explicit_loss(rewards, MIXED))


# ----------------------------------------------------------------------------------------------
# Group integrity


def test_groups_stay_whole_across_shuffled_batches_and_ranks(tmp_path, tiny_dir, tiny_tokenizer):
    rng = random.Random(0)
    records = []
    for g in range(24):
        k = rng.randint(2, 6)
        responses = ["".join(rng.choices("abcdef", k=rng.randint(1, 12))) + str(j) for j in range(k)]
        ranks = [rng.randint(0, 2) for _ in range(k - 1)] + [3]
        records.append({"prompt": f"P{g:02d}:", "responses": responses, "ranks": ranks})
    path = write_jsonl(tmp_path / "c.jsonl", records)
    data = RewardDataModule(train=str(path), tokenizer=str(tiny_dir / "tokenizer"), batch_size=5)
    data.setup("fit")
    loader = data.train_dataloader()
    seen = []
    for rank in range(2):  # what Lightning does under DDP: deal the shuffled, length-grouped order to ranks
        sampler = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=False)
        for batch in DataLoader(data.train_groups, batch_size=5, sampler=sampler, collate_fn=loader.collate_fn):
            rows = zip(batch["input_ids"], batch["attention_mask"])
            texts = [tiny_tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) for ids, mask in rows]
            groups = batch["group"].tolist()
            assert groups == sorted(groups)  # each group's responses are contiguous
            for g in set(groups):
                rows = [t for t, gi in zip(texts, groups) if gi == g]
                prompt = rows[0].split(":")[0]
                record = records[int(prompt[1:])]
                assert [r.split(":", 1)[1] for r in rows] == record["responses"]  # all K, in order, nothing else
                seen.append(prompt)
            pairs = batch["pairs"]
            for w, loser in zip(pairs.winner.tolist(), pairs.loser.tolist()):
                assert groups[w] == groups[loser]  # pairs never cross prompts
                record = records[int(texts[w].split(":")[0][1:])]
                ranks = dict(zip(record["responses"], record["ranks"]))
                assert ranks[texts[w].split(":", 1)[1]] < ranks[texts[loser].split(":", 1)[1]]
    assert sorted(seen) == sorted(f"P{g:02d}" for g in range(24))  # every prompt exactly once over both ranks
    order_epoch_0 = list(loader.sampler)
    loader.sampler.set_epoch(1)
    assert list(loader.sampler) != order_epoch_0  # and the order is shuffled


# ----------------------------------------------------------------------------------------------
# Reading the reward


@pytest.mark.parametrize("side", ["left", "right"])
def test_reward_is_read_at_the_last_real_token(side, module, tiny_tokenizer):
    module.configure_model()
    module.model.eval()
    sequences = [
        tiny_tokenizer("Q:abc")["input_ids"] + [1],
        tiny_tokenizer("Q:a")["input_ids"] + [1],
        [5, 6, 7, 8, 9, 10, 1],
    ]
    input_ids, attention_mask = pad_sequences(sequences, tiny_tokenizer.pad_token_id, side=side)
    with torch.no_grad():
        padded = module({"input_ids": input_ids, "attention_mask": attention_mask})
        for row, ids in enumerate(sequences):
            alone = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))}
            torch.testing.assert_close(padded[row], module(alone)[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(module(alone)[0], token_scores(module.model, **alone)[0, -1])  # the eos position
    assert len(set(padded.tolist())) == 3  # a real model output, not a constant


# ----------------------------------------------------------------------------------------------
# Bad input


BAD = [
    ({"prompt": "p", "responses": ["a"]}, "responses", "at least 2"),
    ({"prompt": "p", "responses": "ab"}, "responses", "expected a list"),
    ({"prompt": "p", "responses": ["a", "b", "a"]}, "responses[2]", "repeats responses[0]"),
    ({"prompt": "p", "responses": ["a", " "]}, "responses[1]", "is empty"),
    ({"prompt": "p", "responses": [1, "b"]}, "responses[0]", "expected a string"),
    ({"prompt": "", "responses": ["a", "b"]}, "prompt", "is empty"),
    ({"responses": ["a", "b"]}, "prompt", "missing"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0]}, "ranks", "1 ranks for 2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": "01"}, "ranks", "expected a list"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, "1"]}, "ranks[1]", "integer"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1.5]}, "ranks[1]", "integer"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [True, False]}, "ranks[0]", "integer"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 2, 2]}, "ranks", "tied"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", "is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected", "identical"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"prompt": "p", "response": "a"}, None, "no comparison fields"),
    ({"prompt": "p", "responses": ["a", "b"], "chosen": "a", "rejected": "b"}, None, "one format"),
    (
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            "chosen": "a",
            "rejected": "b",
        },
        "messages",
        "last message must be from the user",
    ),
]


@pytest.mark.parametrize("record, field, problem", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_record_names_file_record_and_field(tmp_path, tiny_tokenizer, record, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(RecordError) as caught:
        encode(path, tiny_tokenizer)
    message = str(caught.value)
    assert message.startswith(f"{path}: record 2")
    assert problem in message
    if field is not None:
        assert f"field '{field}'" in message


def test_drop_mode_counts_and_logs_every_invalid_record(tmp_path, tiny_dir):
    good = [{"prompt": "ok", "chosen": "a", "rejected": "b"}, {"prompt": "ok2", "responses": ["a", "b", "c"]}]
    path = write_jsonl(tmp_path / "mixed.jsonl", good + [record for record, _, _ in BAD])
    data = RewardDataModule(train=str(path), tokenizer=str(tiny_dir / "tokenizer"), on_invalid="drop")
    with pytest.warns(UserWarning, match=f"dropped {len(BAD)} records"):
        data.setup("fit")
    assert len(data.train_groups) == 2
    assert sum(data.drop_counts.values()) == len(BAD)
    assert data.drop_counts["train/dropped_repeated_response"] == 2 and data.drop_counts["train/dropped_all_tied"] == 1


def test_over_long_groups_truncate_left_drop_or_fail(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a long prompt", "responses": ["xyz", "q"]}])
    (group,), _ = encode(path, tiny_tokenizer, max_length=6, truncation="left")
    assert tiny_tokenizer.decode(group.sequences[0]) == "pt" + "xyz" + "<eos>"  # the response end is kept
    groups, counter = encode(path, tiny_tokenizer, max_length=6, truncation="drop")
    assert groups == [] and counter.reasons["over max_length"] == 1
    with pytest.raises(RecordError, match="record 1.*over max_length=6"):
        encode(path, tiny_tokenizer, max_length=6, truncation="error")


# ----------------------------------------------------------------------------------------------
# Formats


def test_csv_pairs_remapped_fields_and_chat_prompts(tmp_path, tiny_tokenizer):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "good", "bad"])
        writer.writerow(["Q1", "yes", "no"])
    (group,), _ = encode(path, tiny_tokenizer, fields={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [tiny_tokenizer.decode(s) for s in group.sequences] == ["Q1yes<eos>", "Q1no<eos>"] and group.ranks == [0, 1]
    chat = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}], "responses": ["a", "b"]}]
    )
    (group,), _ = encode(chat, tiny_tokenizer)
    assert tiny_tokenizer.decode(group.sequences[0]) == "<|user|>hi\n<|assistant|>a<eos>"
    # centering scores a chat demonstration exactly as the RM scores that response to that prompt
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]
    demo = write_jsonl(tmp_path / "demo.jsonl", [{"messages": turns}])
    (sequence,) = encode_demonstrations(
        read_records(str(demo)),
        tiny_tokenizer,
        FieldMap(),
        max_length=64,
        truncation="error",
        counter=DropCounter("test"),
    )
    assert sequence == group.sequences[0]


def test_missing_sft_directory_names_the_command_that_writes_it(tmp_path, monkeypatch, capsys):
    from lit_rlhf.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError, match=r"lit-rlhf fit --config configs/sft.yaml"):
        RewardModule(model="runs/sft/model")
    with pytest.raises(SystemExit) as exit_info:  # the shipped config, run before the SFT stage
        main(["fit", "--config", str(REPO_ROOT / "configs/rm.yaml")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lit-rlhf: error: ") and "runs/sft/model" in error and "configs/sft.yaml" in error


# ----------------------------------------------------------------------------------------------
# Centering over ranks


def test_rank_shares_cover_the_data_once_and_keep_ranks_in_step():
    items = list(range(7))
    shares = [rank_share(items, rank, 3) for rank in range(3)]
    assert {len(s) for s in shares} == {3}  # the same number of forwards on every rank
    assert sorted(item for share in shares for item, weight in share if weight) == items
    rewards = {i: float(i) ** 2 for i in items}
    # the module reduces means of per-rank sums and counts; their ratio is the global mean
    sums = torch.tensor([sum(rewards[i] * w for i, w in s) for s in shares]).mean()
    counts = torch.tensor([sum(w for _, w in s) for s in shares]).mean()
    assert bias_from_sums(sums, counts) == pytest.approx(-sum(rewards.values()) / len(items))


# ----------------------------------------------------------------------------------------------
# End to end: lit-rlhf fit, export, reload, validate


def preference_data(n: int, seed: int) -> list[dict]:
    """Responses that contain a 'z' are preferred to those that do not; K = 2..4, ties among the rest."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        k = rng.randint(2, 4)
        responses, ranks = [], []
        for j in range(k):
            has_z = j == 0 or rng.random() < 0.3
            letters = rng.choices("abcdefgh", k=rng.randint(3, 6))
            if has_z:
                letters[rng.randrange(len(letters))] = "z"
            responses.append("".join(letters))
            ranks.append(0 if has_z else 1)
        if len(set(ranks)) < 2 or len(set(responses)) < k:
            continue
        records.append({"prompt": "".join(rng.choices("abcdefgh", k=3)) + ":", "responses": responses, "ranks": ranks})
    return records


def test_fit_learns_a_preference_exports_centered_model_and_validates(tmp_path, monkeypatch, tiny_dir, tiny_tokenizer):
    from lit_rlhf.cli import main

    monkeypatch.chdir(tmp_path)  # the config's relative paths (checkpoints) land here
    train = write_jsonl(tmp_path / "train.jsonl", preference_data(240, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", preference_data(60, seed=1))
    demos = write_jsonl(
        tmp_path / "demos.jsonl", [{"prompt": f"q{i}:", "response": "abz"[: 1 + i % 3] * 2} for i in range(30)]
    )
    out = tmp_path / "rm"
    common = [
        "--config",
        str(REPO_ROOT / "configs/rm.yaml"),
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.init_args.tokenizer",
        str(tiny_dir / "tokenizer"),
    ]
    main(
        [
            "fit",
            *common,
            "--trainer.logger.save_dir",
            str(tmp_path / "logs"),  # the config's 1 epoch
            "--model.init_args.model",
            str(tiny_dir / "config.json"),
            "--model.init_args.optimizer.learning_rate",
            "3e-3",
            "--model.init_args.output_dir",
            str(out),
            "--data.init_args.train",
            str(train),
            "--data.init_args.val",
            str(val),
            "--data.init_args.center_on",
            str(demos),
            "--data.init_args.batch_size",
            "16",
        ]
    )

    fit_metrics = read_metrics(tmp_path / "logs")
    assert fit_metrics["val/accuracy"][-1] > 0.85  # chance is 0.5
    assert len(fit_metrics["center/reward_bias"]) == 1  # the bias is logged

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["reward_bias"] != 0.0
    reloaded = load_scalar_model(str(out), trainable=False)  # what PPO loads as reward and value model
    assert reloaded.config.reward_bias == pytest.approx(config["reward_bias"])
    data = RewardDataModule(center_on=str(demos), tokenizer=str(out))
    rewards = torch.cat([reloaded_rewards(reloaded, b) for b in data.center_dataloader()])
    assert abs(rewards.mean().item()) < 1e-4  # centered: the demonstrations score mean 0

    main(
        [
            "validate",
            *common,
            "--trainer.logger.save_dir",
            str(tmp_path / "val_logs"),
            "--model.init_args.model",
            str(out),
            "--data.init_args.val",
            str(val),
            "--data.init_args.train",
            str(tmp_path / "absent.jsonl"),
        ]
    )
    val_metrics = read_metrics(tmp_path / "val_logs")
    assert val_metrics["val/accuracy"][-1] == pytest.approx(fit_metrics["val/accuracy"][-1], abs=1e-4)


def reloaded_rewards(model, batch) -> torch.Tensor:
    from lit_rlhf.models.heads import sequence_rewards

    with torch.no_grad():
        return sequence_rewards(model, batch["input_ids"], batch["attention_mask"])


def read_metrics(save_dir: Path) -> dict[str, list[float]]:
    (path,) = save_dir.rglob("metrics.csv")
    metrics: dict[str, list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if value:
                    metrics.setdefault(name, []).append(float(value))
    return metrics
