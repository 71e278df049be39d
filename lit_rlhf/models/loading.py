"""Loading Hugging Face models and tokenizers from a model source (:mod:`lit_rlhf.models.sources`), shared by
every stage: causal LMs, scalar-head models (reward and value models: ``AutoModelForSequenceClassification`` with
one label, read by :mod:`lit_rlhf.models.heads`), tokenizers with a pad token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_rlhf.errors import ConfigError
from lit_rlhf.models.directories import check_model_directory, incomplete_directory
from lit_rlhf.models.heads import scalar_head
from lit_rlhf.models.sources import check_local_source, resolve_source

#: Config fields that mean "dropout on the residual stream" across common architectures.
_RESIDUAL_DROPOUT_FIELDS = ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob", "residual_dropout", "dropout")


def load_config(source: str) -> PretrainedConfig:
    """The config of a model source (see the module docstring)."""
    source = resolve_source(source)
    check_local_source(source, "model")
    check_model_directory(source)
    if source.endswith(".json"):
        with open(source) as f:
            fields = json.load(f)
        if "model_type" not in fields:
            raise ValueError(
                f"{source}: field 'model_type': a model config file must name its model_type (e.g. 'llama')."
            )
        return AutoConfig.for_model(**fields)
    if source.endswith(".gguf"):
        return AutoConfig.from_pretrained(str(Path(source).parent), gguf_file=Path(source).name)
    return AutoConfig.from_pretrained(source)


def set_residual_dropout(config: PretrainedConfig, p: float) -> list[str]:
    """Set residual dropout on every field of ``config`` that means it; returns the fields set.

    The paper uses 0.2 for SFT. Architectures without such a field (Llama has none) raise, so a
    configured dropout is never silently ignored.
    """
    fields = [name for name in _RESIDUAL_DROPOUT_FIELDS if hasattr(config, name)]
    if not fields:
        raise ValueError(
            f"model type '{config.model_type}' has no residual dropout field (looked for "
            f"{', '.join(_RESIDUAL_DROPOUT_FIELDS)}); leave `dropout` unset for this model."
        )
    for name in fields:
        setattr(config, name, p)
    return fields


def _from_source(auto_class: Any, source: str, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
    """``source`` must already be resolved (:func:`resolve_source`)."""
    if source.endswith(".json"):
        return auto_class.from_config(config, **{k: v for k, v in kwargs.items() if k == "dtype"})
    if source.endswith(".gguf"):
        path = Path(source)
        model = auto_class.from_pretrained(str(path.parent), gguf_file=path.name, config=config, **kwargs)
        return _clear_quantized_flag(model)
    try:
        return auto_class.from_pretrained(source, config=config, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        if not Path(source).expanduser().is_dir():
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise incomplete_directory(source, f"its weights could not be loaded ({first_line})") from e


def _clear_quantized_flag(model: PreTrainedModel) -> PreTrainedModel:
    """GGUF weights arrive dequantised to float, but flagged as quantized; the flag blocks training and saving."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property derived from hf_quantizer in some versions
            pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_causal_lm(
    source: str,
    *,
    dtype: torch.dtype | None = None,
    dropout: float | None = None,
    gradient_checkpointing: bool = False,
    trainable: bool = True,
) -> PreTrainedModel:
    """A causal LM from a source string (see module docstring).

    ``from_pretrained`` returns models in eval mode; trainable models are put in train mode here,
    frozen ones are left in eval mode with ``requires_grad=False``.
    """
    source = resolve_source(source)
    config = load_config(source)
    if dropout is not None:
        set_residual_dropout(config, dropout)
    model = _from_source(AutoModelForCausalLM, source, config, **({"dtype": dtype} if dtype else {}))
    return _prepare(model, gradient_checkpointing=gradient_checkpointing, trainable=trainable)


def load_scalar_model(
    source: str,
    *,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    trainable: bool = True,
) -> PreTrainedModel:
    """A transformer with its unembedding replaced by a scalar head (reward and value models).

    From a causal-LM directory (an SFT output) the head is freshly initialised; from a reward-model
    directory it is loaded together with the centering bias in ``config.reward_bias``.
    """
    source = resolve_source(source)
    config = load_config(source)
    config.num_labels = 1
    model = _from_source(AutoModelForSequenceClassification, source, config, **({"dtype": dtype} if dtype else {}))
    scalar_head(model)  # fail now, with the model type, if the architecture has no head we know
    return _prepare(model, gradient_checkpointing=gradient_checkpointing, trainable=trainable)


def _prepare(model: PreTrainedModel, *, gradient_checkpointing: bool, trainable: bool) -> PreTrainedModel:
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def load_tokenizer(source: str, *, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """A tokenizer from a model source, with a pad token (eos when it has none)."""
    source = resolve_source(source)
    check_local_source(source, "tokenizer")
    check_model_directory(source, tokenizer=True)
    if source.endswith(".gguf"):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(source).parent), gguf_file=Path(source).name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer '{source}' has neither a pad nor an eos token; add one to its tokenizer_config.json."
            )
        # Padding is always masked by attention masks, so reusing eos as pad is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def default_tokenizer_source(model_source: str, tokenizer_source: str | None) -> str:
    """The tokenizer travels with the model unless the model is a bare config file."""
    if tokenizer_source:
        return tokenizer_source
    if model_source.endswith(".json"):
        raise ValueError(f"model '{model_source}' is a config file; set `tokenizer` to a tokenizer directory too.")
    return model_source


def tokenizers_agree(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers map text to the same token ids and end sequences alike (vocabulary and eos)."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def check_same_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str, argument: str) -> None:
    """A reward or value model reads the policy's token ids as they are, so it must share its vocabulary:
    refuse (no re-tokenisation) when ``source`` ships a different tokenizer, or has an embedding table too
    small for the policy's token ids."""
    path = Path(source).expanduser()
    if any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        if not tokenizers_agree(tokenizer, load_tokenizer(str(path))):
            raise ConfigError(
                f"{argument} '{source}' uses a different tokenizer than the policy (vocabulary or eos differ). The "
                "policy's token ids go to it unchanged; train it from the same SFT model (lit-rlhf fit --config "
                "configs/rm.yaml) or pick a matching policy."
            )
    vocab_size = getattr(load_config(source), "vocab_size", None)
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ConfigError(
            f"{argument} '{source}' has {vocab_size} token embeddings but the policy's tokenizer has {len(tokenizer)} "
            "tokens; its token ids would index past the table. Use a reward model trained from the same SFT model."
        )
