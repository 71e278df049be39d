"""The Lightning strategies lit-rlhf ships: :class:`HFFSDPStrategy` (FSDP1 with per-decoder-layer wrapping found
from the Hugging Face models) and :class:`FSDP2Strategy` (``ModelParallelStrategy`` as pure FSDP2), and how the
decoder-layer classes of a model are found."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from transformers import PreTrainedModel


def layer_class_names(root: torch.nn.Module) -> set[str]:
    """Names of the layer classes Hugging Face says must not be split: ``_no_split_modules`` of every HF model in
    ``root``."""
    names: set[str] = set()
    for module in root.modules():
        if isinstance(module, PreTrainedModel):
            names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def layer_classes(root: torch.nn.Module, names: Optional[Sequence[str]] = None) -> set[type]:
    """The module classes inside ``root`` named ``names`` (default: :func:`layer_class_names`).

    Raises with the names looked for when none of them occurs, so a typo never means "no wrapping".
    """
    wanted = set(names) if names else layer_class_names(root)
    if not wanted:
        raise ValueError(
            "the model declares no `_no_split_modules`; name its decoder-layer class explicitly (e.g. layer_classes: "
            "[LlamaDecoderLayer])"
        )
    found = {type(m) for m in root.modules() if type(m).__name__ in wanted}
    if not found:
        raise ValueError(f"no module of class {sorted(wanted)} in {type(root).__name__}; check the layer class names")
    return found


class HFFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` that wraps (and optionally checkpoints) each decoder layer of the HF models.

    The layer class is found from the model when it is set up (``_no_split_modules`` of every Hugging
    Face model in the LightningModule), so one YAML serves every architecture. All other arguments are
    ``FSDPStrategy``'s (``sharding_strategy``, ``state_dict_type``: ``full`` or ``sharded`` checkpoints, ...).

    Args:
        layer_classes: Class names to wrap, overriding the automatic choice (e.g. ``[LlamaDecoderLayer]``).
        checkpoint_layers: Activation checkpointing on the same layers (recompute in backward, less memory).
    """

    def __init__(self, layer_classes: Optional[list[str]] = None, checkpoint_layers: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.layer_class_names = layer_classes
        self.checkpoint_layers = checkpoint_layers

    def resolve_layer_policies(self, model: torch.nn.Module) -> None:
        """Set the auto-wrap (and checkpointing) policy from the layer classes found in ``model``."""
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = layer_classes(model, self.layer_class_names)
        self.kwargs.setdefault("auto_wrap_policy", ModuleWrapPolicy(classes))
        if self.checkpoint_layers and not self._activation_checkpointing_kwargs:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(classes)}

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        self.resolve_layer_policies(model)
        return super()._setup_model(model)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as pure FSDP2: every process is one data-parallel shard.

    (``ModelParallelStrategy``'s own ``auto`` sizes mean "data parallel across nodes, tensor parallel
    within one", which needs tensor-parallel plans; lit-rlhf shards with ``fully_shard`` only.)
    The modules shard their models themselves in ``configure_model`` (:func:`shard_models`).

    Args:
        save_distributed_checkpoint: Write sharded checkpoints (a folder, one file per rank) instead of
            one full file gathered on rank 0.
        process_group_backend: ``nccl`` / ``gloo``; default by device.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: Optional[str] = None):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
