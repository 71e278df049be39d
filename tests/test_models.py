"""Model and tokenizer loading from every kind of source, scalar heads, and export."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_rlhf.models.heads import last_token_index, position_ids_from_mask, sequence_rewards, set_reward_bias
from lit_rlhf.models.loading import load_causal_lm, load_config, load_scalar_model, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory
from lit_rlhf.models.sources import ModelSourceError


def test_random_init_from_config_then_reload_from_directory(tiny_dir, tiny_tokenizer, tmp_path):
    model = load_causal_lm(str(tiny_dir / "config.json"))
    assert model.training and all(p.requires_grad for p in model.parameters())
    out = save_hf_directory(model, tiny_tokenizer, tmp_path / "hf")
    reloaded = load_causal_lm(str(out), trainable=False)
    assert not reloaded.training and not any(p.requires_grad for p in reloaded.parameters())
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert load_tokenizer(str(out)).pad_token_id == tiny_tokenizer.pad_token_id


def test_missing_sources_fail_with_the_path(tmp_path):
    with pytest.raises(ModelSourceError, match="runs/nothing/model' does not exist"):
        load_causal_lm(str(tmp_path / "runs/nothing/model"))
    with pytest.raises(ModelSourceError, match="missing.json"):
        load_config("missing.json")


def test_config_file_must_name_model_type(tmp_path):
    (tmp_path / "c.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ValueError, match="field 'model_type'"):
        load_config(str(tmp_path / "c.json"))


def test_residual_dropout_is_set_or_refused(tiny_dir):
    gpt2 = load_causal_lm(str(tiny_dir / "gpt2.json"), dropout=0.2)
    assert gpt2.config.resid_pdrop == 0.2
    with pytest.raises(ValueError, match="no residual dropout field"):
        load_causal_lm(str(tiny_dir / "config.json"), dropout=0.2)


def test_gradient_checkpointing_option(tiny_dir):
    model = load_causal_lm(str(tiny_dir / "config.json"), gradient_checkpointing=True)
    assert model.is_activation_checkpointing


def test_pad_token_falls_back_to_eos(tmp_path):
    from conftest import build_char_tokenizer
    from transformers import AutoTokenizer

    path = build_char_tokenizer(tmp_path / "tok")
    raw = AutoTokenizer.from_pretrained(path)
    raw.pad_token = None
    raw.save_pretrained(path)
    tokenizer = load_tokenizer(str(path), padding_side="left")
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


def test_positions_and_last_token_for_both_paddings():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 0]
    assert last_token_index(left).tolist() == [3, 3]
    assert position_ids_from_mask(left).tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]


def test_scalar_model_reward_is_padding_invariant_and_carries_bias(tiny_dir, tiny_tokenizer, tmp_path):
    lm_dir = save_hf_directory(load_causal_lm(str(tiny_dir / "config.json")), tiny_tokenizer, tmp_path / "lm")
    rm = load_scalar_model(str(lm_dir), trainable=False)
    ids = [10, 11, 12]
    right = sequence_rewards(rm, torch.tensor([ids + [0, 0]]), torch.tensor([[1, 1, 1, 0, 0]]))
    left = sequence_rewards(rm, torch.tensor([[0, 0] + ids]), torch.tensor([[0, 0, 1, 1, 1]]))
    alone = sequence_rewards(rm, torch.tensor([ids]), torch.tensor([[1, 1, 1]]))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)
    set_reward_bias(rm, -0.5)
    rm_dir = save_hf_directory(rm, tiny_tokenizer, tmp_path / "rm")
    reloaded = load_scalar_model(str(rm_dir), trainable=False)
    centred = sequence_rewards(reloaded, torch.tensor([ids]), torch.tensor([[1, 1, 1]]))
    raw = sequence_rewards(reloaded, torch.tensor([ids]), torch.tensor([[1, 1, 1]]), centered=False)
    torch.testing.assert_close(centred, alone - 0.5, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(raw, alone, atol=1e-5, rtol=1e-4)


def test_exported_directory_loads_in_plain_transformers_and_generates(tiny_dir, tiny_tokenizer, tmp_path):
    out = save_hf_directory(load_causal_lm(str(tiny_dir / "config.json")), tiny_tokenizer, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out)
    generated = model.generate(torch.tensor([[10, 11]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 6)
