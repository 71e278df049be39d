"""Everything that depends on the distributed strategy lives in this package, so algorithm code never asks
which strategy runs it; one concern per file:

- :mod:`~lit_rlhf.distributed.strategies`: :class:`HFFSDPStrategy` (Lightning's ``FSDPStrategy``, FSDP1, wrapping
  each decoder layer found from the Hugging Face models; SFT and RM, not PPO: FSDP1 breaks manual backward) and
  :class:`FSDP2Strategy` (``ModelParallelStrategy`` as pure FSDP2);
- :mod:`~lit_rlhf.distributed.sharding`: :func:`shard_models`, FSDP2 ``fully_shard`` of each model (per decoder
  layer, then the model) under ``ModelParallelStrategy``, a no-op otherwise; modules call it unconditionally from
  ``configure_model``;
- :mod:`~lit_rlhf.distributed.export`: full weights gathered on rank 0 whatever the sharding, and the Hugging
  Face export;
- :mod:`~lit_rlhf.distributed.collectives`: means over ranks and PPO's explicit gradient averaging under DDP;
- :mod:`~lit_rlhf.distributed.generation`: :func:`sample_continuations`, the one ``generate`` entry point.

The public names are importable from the package too (``class_path: lit_rlhf.distributed.HFFSDPStrategy``).
"""

from lit_rlhf.distributed.collectives import (
    all_reduce_mean,
    attached_trainer,
    global_masked_moments,
    local_backward,
    sync_gradients,
)
from lit_rlhf.distributed.export import export_hf, full_state_dict, full_tensors_by_layer, submodule_state
from lit_rlhf.distributed.generation import sample_continuations
from lit_rlhf.distributed.sharding import gathered_weights, is_sharded, shard_models
from lit_rlhf.distributed.strategies import FSDP2Strategy, HFFSDPStrategy, layer_class_names, layer_classes

__all__ = [
    "FSDP2Strategy",
    "HFFSDPStrategy",
    "all_reduce_mean",
    "attached_trainer",
    "export_hf",
    "full_state_dict",
    "full_tensors_by_layer",
    "gathered_weights",
    "global_masked_moments",
    "is_sharded",
    "layer_class_names",
    "layer_classes",
    "local_backward",
    "sample_continuations",
    "shard_models",
    "submodule_state",
    "sync_gradients",
]
