"""Hugging Face models and tokenizers, shared by every stage, one concern per file:

- :mod:`~lit_rlhf.models.sources`: what a model source string names (directory, hub id, ``.gguf``, ``.json``
  config, ``pkg:`` file) and the stage that writes a missing one;
- :mod:`~lit_rlhf.models.directories`: refusing a model directory that is not a whole ``save_pretrained`` output;
- :mod:`~lit_rlhf.models.loading`: causal LMs, scalar-head (reward and value) models and tokenizers from a source;
- :mod:`~lit_rlhf.models.heads`: positions, scalar heads and the reward model's centering bias;
- :mod:`~lit_rlhf.models.saving`: writing a Hugging Face directory;
- :mod:`~lit_rlhf.models.adapters`: LoRA-wrapped models and the model under the wrapper.

The public names are importable from the package too.
"""

from lit_rlhf.models.adapters import is_lora, unwrap
from lit_rlhf.models.directories import check_model_directory
from lit_rlhf.models.heads import (
    REWARD_BIAS_KEY,
    last_token_index,
    position_ids_from_mask,
    reward_bias,
    scalar_head,
    scalar_head_name,
    sequence_rewards,
    set_reward_bias,
    token_scores,
)
from lit_rlhf.models.loading import (
    check_same_tokenizer,
    default_tokenizer_source,
    load_causal_lm,
    load_config,
    load_scalar_model,
    load_tokenizer,
    set_residual_dropout,
)
from lit_rlhf.models.saving import current_command, drop_tied_copies, save_hf_directory
from lit_rlhf.models.sources import ModelSourceError, require_stage_output, resolve_source

__all__ = [
    "REWARD_BIAS_KEY",
    "ModelSourceError",
    "check_model_directory",
    "check_same_tokenizer",
    "current_command",
    "default_tokenizer_source",
    "drop_tied_copies",
    "is_lora",
    "last_token_index",
    "load_causal_lm",
    "load_config",
    "load_scalar_model",
    "load_tokenizer",
    "position_ids_from_mask",
    "require_stage_output",
    "resolve_source",
    "reward_bias",
    "save_hf_directory",
    "scalar_head",
    "scalar_head_name",
    "sequence_rewards",
    "set_residual_dropout",
    "set_reward_bias",
    "token_scores",
    "unwrap",
]
