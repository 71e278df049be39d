"""End-to-end SFT through the ``lit-rlhf`` command: train, export, reload, generate, resume, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT, write_jsonl
from transformers import AutoModelForCausalLM

from lit_rlhf.cli import main
from lit_rlhf.modules import SFTModule
from lit_rlhf.settings import OptimizerSettings

SANDBOX = "lit_rlhf/sandbox/assets"
TINY_OVERRIDES = [
    "--model.init_args.model",
    f"{SANDBOX}/base_config.json",
    "--model.init_args.tokenizer",
    f"{SANDBOX}/tokenizer",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
]


def test_shipped_sft_config_trains_exports_and_resumes(in_scratch_dir):
    # The shipped config as is (wandb offline), on the random-init sandbox model for a few steps.
    main(
        [
            "fit",
            "--config",
            "configs/sft.yaml",
            *TINY_OVERRIDES,
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "2",
        ]
    )
    export = in_scratch_dir / "runs/sft/model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(export)
    generated = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 8)
    assert list((in_scratch_dir / "runs/sft").glob("wandb/offline-run-*")), "wandb did not log offline"

    # The optimizer settings group is stored as a plain dict: the checkpoint loads with weights_only, and
    # load_from_checkpoint rebuilds the typed group.
    last = in_scratch_dir / "runs/sft/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 4
    assert first["hyper_parameters"]["optimizer"]["learning_rate"] == 2e-3
    assert SFTModule.load_from_checkpoint(last).optimizer == OptimizerSettings(learning_rate=2e-3)

    # Resume from the last checkpoint with a new learning rate and train 2 more steps: the step counter
    # continues, and the new learning rate applies (the cosine schedule rescaled to the new peak).
    main(
        [
            "fit",
            "--config",
            "configs/sft.yaml",
            *TINY_OVERRIDES,
            "--trainer.max_steps",
            "6",
            "--ckpt_path",
            "last",
            "--model.init_args.optimizer.learning_rate",
            "1e-3",
        ]
    )
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 6
    assert resumed["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1e-3
    assert resumed["lr_schedulers"][0]["base_lrs"] == [1e-3]
    assert resumed["lr_schedulers"][0]["last_epoch"] == 6  # the schedule resumed too, not restarted


def test_sft_learns_the_response_only(in_scratch_dir):
    """Loss on responses only: the model learns a fixed reply and still scores badly on prompt text."""
    data = write_jsonl(in_scratch_dir / "d.jsonl", [{"prompt": f"q{i % 7} x", "response": " ok"} for i in range(64)])
    main(
        [
            "fit",
            "--config",
            "configs/sft.yaml",
            *TINY_OVERRIDES,
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            "runs",
            "--trainer.max_steps",
            "40",
            "--data.init_args.train",
            str(data),
            "--data.init_args.val",
            str(data),
            "--data.init_args.batch_size",
            "16",
            "--model.init_args.optimizer.learning_rate",
            "3e-3",
        ]
    )
    from lit_rlhf.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer("runs/sft/model")
    model = load_causal_lm("runs/sft/model", trainable=False)
    prompt = tokenizer("q3 x")["input_ids"]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True) == " ok"


def test_print_config_shows_every_sft_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config", "--config", str(REPO_ROOT / "configs/sft.yaml")])
    printed = capsys.readouterr().out
    for option in (
        "optimizer",
        "learning_rate",
        "betas",
        "min_lr_ratio",
        "warmup_steps",
        "dropout",
        "gradient_checkpointing",
        "output_dir",
        "export_checkpoint",
        "max_length",
        "truncation",
        "group_by_length",
        "pack",
        "val_fraction",
        "fields",
    ):
        assert f"{option}:" in printed, option


def test_bad_record_stops_before_training_with_file_line_and_field(in_scratch_dir, capsys):
    bad = write_jsonl(in_scratch_dir / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": ""}])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "configs/sft.yaml",
                *TINY_OVERRIDES,
                "--trainer.logger",
                "false",
                "--data.init_args.train",
                str(bad),
            ]
        )
    assert exit_info.value.code == 2
    assert f"lit-rlhf: error: {bad}: record 2: field 'response': is empty" in capsys.readouterr().err
    assert not (in_scratch_dir / "runs/sft/checkpoints").exists()


def test_lm_head_at_labelled_positions_only_gives_the_full_loss_and_gradients():
    """SFTModule.loss runs the LM head only where a label follows; loss and gradients equal the full-logits ones."""
    from lit_rlhf.algorithms.lm import IGNORE_INDEX, labelled_positions, next_token_loss
    from lit_rlhf.modules import SFTModule

    torch.manual_seed(0)
    module = SFTModule(model=f"{REPO_ROOT}/{SANDBOX}/base_config.json", tokenizer=f"{REPO_ROOT}/{SANDBOX}/tokenizer")
    module.configure_model()
    input_ids = torch.randint(5, 100, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # right padding
    labels = input_ids.clone()
    labels[0, :7] = labels[1, :4] = labels[2, :8] = IGNORE_INDEX  # prompts of different lengths
    labels[1, 9:] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    positions = labelled_positions(labels)
    assert positions.tolist() == list(range(3, 11))  # column 11 predicts nothing; columns 0-2 only prompts
    sliced_loss, sliced_count = module.loss(batch)
    sliced_grads = torch.autograd.grad(sliced_loss, list(module.model.parameters()))
    full_loss, full_count = next_token_loss(module(batch), labels)
    full_grads = torch.autograd.grad(full_loss, list(module.model.parameters()))
    assert sliced_count == full_count == 5 + 5 + 4
    torch.testing.assert_close(sliced_loss, full_loss)
    for sliced, full in zip(sliced_grads, full_grads):
        torch.testing.assert_close(sliced, full)
    assert module(batch, positions).shape[1] == 8 < module(batch).shape[1]
