"""LoRA (peft): trainable-parameter counts, adapters-off reference, merged and adapter-only exports."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_rlhf.lora import LoraOptions, adapters_disabled, apply_lora, merged_state_dict, trainable_parameter_count
from lit_rlhf.models.heads import scalar_head_name, token_scores
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model
from lit_rlhf.models.saving import save_hf_directory

OPTIONS = LoraOptions(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
HIDDEN, LAYERS, R = 32, 2, 4  # the tiny Llama of conftest: q and v are 32 x 32


def perturbed(model):
    """Non-zero adapters (peft initialises B = 0, which would make every comparison trivially pass)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


@pytest.fixture
def base_dir(tiny_dir, tmp_path):
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_dir / "config.json"))
    return save_hf_directory(model, None, tmp_path / "base")


def test_trainable_parameters_are_the_adapters_only(base_dir):
    model = apply_lora(load_causal_lm(str(base_dir)), OPTIONS)
    per_layer = 2 * R * (HIDDEN + HIDDEN)  # q and v: A is r x in, B is out x r
    assert trainable_parameter_count(model) == LAYERS * per_layer
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert model.training  # from_pretrained returns eval mode; a trainable model must train (dropout)


def test_reward_model_trains_its_new_head_in_full(base_dir):
    scalar = load_scalar_model(str(base_dir))
    model = apply_lora(scalar, OPTIONS, head=scalar_head_name(scalar))
    assert trainable_parameter_count(model) == LAYERS * 2 * R * (HIDDEN + HIDDEN) + HIDDEN  # + score: 32 -> 1, no bias
    ids = torch.tensor([[5, 6, 7, 8]])
    assert token_scores(model, ids, torch.ones_like(ids)).shape == (1, 4)


def test_reference_is_the_policy_with_adapters_off(base_dir):
    base = load_causal_lm(str(base_dir), trainable=False)
    policy = perturbed(apply_lora(load_causal_lm(str(base_dir)), OPTIONS)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = base(ids).logits.log_softmax(-1)
        with adapters_disabled(policy):
            reference = policy(input_ids=ids).logits.log_softmax(-1)
        adapted = policy(input_ids=ids).logits.log_softmax(-1)
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapters do act when enabled
    # no second copy of the base weights: every base parameter is shared by the "two" models
    assert (
        sum(p.numel() for p in policy.parameters())
        == sum(p.numel() for p in base.parameters()) + LAYERS * 2 * R * 2 * HIDDEN
    )


def test_merged_export_equals_the_adapted_model(base_dir, tmp_path):
    from lit_rlhf.lora import save_lora_directory

    policy = perturbed(apply_lora(load_causal_lm(str(base_dir)), OPTIONS)).eval()
    state = policy.state_dict()
    merged = merged_state_dict(state, policy.peft_config["default"])
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = policy(input_ids=ids).logits
    save_lora_directory(policy, None, tmp_path / "merged", state, "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    save_lora_directory(policy, None, tmp_path / "adapter", state, "adapter")
    assert (tmp_path / "adapter/adapter_config.json").exists() and not (tmp_path / "adapter/model.safetensors").exists()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-5, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        torch.testing.assert_close(adapted(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_no_options_leaves_the_model_alone(base_dir):
    model = load_causal_lm(str(base_dir))
    assert apply_lora(model, None) is model
    with pytest.raises(ValueError, match="lora.r"):
        apply_lora(model, LoraOptions(r=0))


def test_everything_but_lora_works_without_peft(monkeypatch, tiny_dir):
    """peft is an optional extra: without it models are never LoRA, and asking for LoRA says what to install."""
    import sys

    from lit_rlhf.errors import ConfigError
    from lit_rlhf.lora import LoraOptions, apply_lora, is_lora, unwrap
    from lit_rlhf.models.loading import load_causal_lm

    model = load_causal_lm(str(tiny_dir / "config.json"))
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail, as when it is not installed
    assert not is_lora(model) and unwrap(model) is model
    with pytest.raises(ConfigError, match=r'pip install -e ".\[lora\]"'):
        apply_lora(model, LoraOptions())
