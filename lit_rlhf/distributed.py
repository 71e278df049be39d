"""Everything that depends on the distributed strategy lives here, so algorithm code never asks
which strategy runs it.

- :class:`HFFSDPStrategy`: Lightning's ``FSDPStrategy`` (FSDP1) that finds the decoder-layer class of
  the Hugging Face models it wraps (their ``_no_split_modules``) for auto-wrap and activation
  checkpointing. For SFT and RM (FSDP1 breaks manual backward, so not for PPO).
- :func:`shard_models`: FSDP2 ``fully_shard`` of each model (per decoder layer, then the model) when
  the module runs under ``ModelParallelStrategy``; a no-op under DDP or one device. Modules call it
  unconditionally from ``configure_model``.
- :func:`full_state_dict` / :func:`export_hf`: full weights gathered on rank 0, whatever the sharding.
- :func:`sample_continuations`: the one ``generate`` entry point; sharded models are gathered once per
  call and every rank steps until all are done (``synced_gpus``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.atomic import atomic_directory
from lit_rlhf.lora import is_lora, save_lora_directory, unwrap
from lit_rlhf.models import current_command, save_hf_directory

# ----------------------------------------------------------------------------------------------
# Decoder-layer classes


def layer_class_names(root: torch.nn.Module) -> set[str]:
    """Names of the layer classes Hugging Face says must not be split: ``_no_split_modules`` of every HF model in ``root``."""
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
            "the model declares no `_no_split_modules`; name its decoder-layer class explicitly (e.g. layer_classes: [LlamaDecoderLayer])"
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


# ----------------------------------------------------------------------------------------------
# FSDP2 (ModelParallelStrategy)


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


def shard_models(module: LightningModule, models: Iterable[Optional[torch.nn.Module]], *, reshard_after_forward: bool = True) -> None:
    """``fully_shard`` each model over the data-parallel mesh: every decoder layer, then the model itself.

    Each model (trainable or frozen) becomes its own FSDP2 unit. A no-op unless the module runs under
    ``ModelParallelStrategy`` (which sets ``module.device_mesh`` before ``configure_model``).
    """
    mesh = getattr(module, "device_mesh", None)
    if mesh is None:
        return
    from torch.distributed.fsdp import fully_shard

    data_mesh = mesh["data_parallel"]
    for model in models:
        if model is None or _fsdp2_units(model):
            continue
        # A LoRA model's root unit is the HF model inside the peft wrapper: peft's generate() calls it
        # directly, and FSDP2 needs one root per model.
        root = unwrap(model)
        units = [m for m in root.modules() if type(m) in layer_classes(root)]
        for unit in units + _separable_children(root) + [root]:
            fully_shard(unit, mesh=data_mesh, reshard_after_forward=reshard_after_forward)


def _separable_children(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The HF model's direct children (backbone, heads) that share no parameter with the rest of it.

    Reward and value models call their backbone and score head directly (the head is applied at
    every position), which skips the root's FSDP2 hooks, so each must be a unit of its own. A causal
    LM with tied embeddings shares the embedding with its head: those stay together in the root unit.
    """
    hf_model = unwrap(model)
    children = [c for c in hf_model.children() if any(True for _ in c.parameters())]
    separable = []
    for child in children:
        inside = {id(p) for p in child.parameters()}
        others = {id(p) for c in children if c is not child for p in c.parameters()}
        if not inside & others:
            separable.append(child)
    return separable


def _fsdp2_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _is_fsdp1(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s weights are split across ranks (FSDP1 or FSDP2)."""
    return bool(_fsdp2_units(model)) or _is_fsdp1(model)


@contextlib.contextmanager
def gathered_weights(model: torch.nn.Module) -> Iterator[None]:
    """Hold ``model``'s full weights on every rank for the duration (one all-gather, not one per forward).

    FSDP2: unshard every unit with resharding after forward off, reshard at the end. FSDP1: the root
    FSDP wrapper's ``summon_full_params``. Unsharded models: nothing to do.
    """
    units = _fsdp2_units(model)
    if units:
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(True, recurse=False)
        return
    if _is_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = next(m for m in model.modules() if isinstance(m, FSDP))
        with FSDP.summon_full_params(root, writeback=False, recurse=True):
            yield
        return
    yield


# ----------------------------------------------------------------------------------------------
# Full weights and export


def full_tensors_by_layer(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """``model``'s state dict as full (unsharded) tensors, one decoder layer at a time (then what is outside the layers).

    A sharded (FSDP2 DTensor) entry is all-gathered only when its layer is reached, so at most one layer's full
    tensors are held at once, never the whole model. A collective under FSDP2: every rank must iterate it to the
    end. Unsharded models (one device, DDP) yield their own tensors, detached. Keys are ``model.state_dict()``'s.
    """
    from torch.distributed.tensor import DTensor

    def full(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()

    state = model.state_dict()  # sharded tensors stay sharded here: nothing is gathered yet
    layers: dict[str, list[str]] = {}
    for key in state:
        layers.setdefault(_layer_prefix(key), []).append(key)
    rest = layers.pop("", [])
    for keys in [*layers.values(), rest]:
        yield {key: full(state[key]) for key in keys}


def _layer_prefix(key: str) -> str:
    """``...layers.3.`` for a key inside a numbered layer list (``h.3.`` in GPT-2), else ``""``."""
    parts = key.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit() and parts[i - 1] in ("layers", "h", "layer", "blocks"):
            return ".".join(parts[: i + 1]) + "."
    return ""


def full_state_dict(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's full (unsharded) state dict, on CPU, complete on global rank 0.

    A collective: every rank must call it. Full weights are gathered whatever checkpoint format the
    strategy writes (``state_dict_type: sharded`` checkpoints still export full weights).
    """
    strategy = trainer.strategy
    if isinstance(strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(strategy.lightning_module, options=options)
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # Offloading is for GPU memory; on CPU devices it frees the storage the clones are read from.
        config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
        with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
            return {k: v.cpu() for k, v in strategy.model.state_dict().items()}
    return strategy.lightning_module_state_dict()


def submodule_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state`` under ``prefix.`` with the prefix removed (one model of a module)."""
    start = prefix + "."
    return {k[len(start) :]: v.detach().cpu() for k, v in state.items() if k.startswith(start)}


def export_hf(
    module: LightningModule,
    attribute: str,
    tokenizer: Optional[PreTrainedTokenizerBase],
    out_dir: str | Path,
    state: Optional[dict[str, torch.Tensor]] = None,
    lora_export: Literal["merged", "adapter"] = "merged",
) -> Optional[Path]:
    """Write ``module.<attribute>`` as a Hugging Face directory from global rank 0.

    Every rank must call this (gathering sharded weights is collective). ``state`` overrides the
    weights written (e.g. EMA weights or a best checkpoint's), given as the module's state dict.
    A model with LoRA adapters is written merged into its base weights, or as adapters only
    (``lora_export``).
    """
    trainer = module.trainer
    if state is None:
        state = full_state_dict(trainer)
    path = None
    if trainer.is_global_zero:
        model: PreTrainedModel = getattr(module, attribute)
        model_state = submodule_state(state, attribute)
        if not model_state:
            raise RuntimeError(f"no weights under '{attribute}.' in the state dict; cannot export {out_dir}")
        if is_lora(model):
            with atomic_directory(out_dir, command=current_command()) as temp:  # moved into place only when complete
                save_lora_directory(model, tokenizer, temp, model_state, lora_export)
            path = Path(out_dir)
        else:
            path = save_hf_directory(model, tokenizer, out_dir, state_dict=model_state)
    trainer.strategy.barrier("export_hf")
    return path


@contextlib.contextmanager
def local_backward(module: LightningModule) -> Iterator[None]:
    """Backward passes whose gradients stay on their rank until :func:`sync_gradients` (DDP).

    DDP's reducer expects one backward per wrapped forward; PPO makes many backward passes and
    optimizer steps inside one ``training_step`` and calls its models directly, so under DDP the
    gradients are averaged explicitly once per optimizer step instead. Sharded strategies (FSDP2)
    reduce gradients in their own backward hooks: nothing to do.
    """
    strategy = module.trainer.strategy
    if isinstance(strategy, DDPStrategy):
        with strategy.block_backward_sync():
            yield
    else:
        yield


def sync_gradients(module: LightningModule, params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over DDP ranks (see :func:`local_backward`); a no-op otherwise.

    Every rank reduces every trainable parameter in the same order (a missing gradient counts as
    zero), so ranks whose batches left some parameter unused cannot fall out of step.
    """
    strategy = module.trainer.strategy
    if not isinstance(strategy, DDPStrategy) or strategy.world_size == 1:
        return
    for param in params:
        if not param.requires_grad:
            continue
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        dist.all_reduce(grad)
        param.grad = grad.div_(strategy.world_size)


def all_reduce_mean(value: torch.Tensor, module: LightningModule) -> torch.Tensor:
    """Mean of a tensor over all ranks (a no-op in one process, or for a module not attached to a Trainer)."""
    if module._trainer is None:
        return value
    return module.trainer.strategy.reduce(value, reduce_op="mean")


def global_masked_moments(x: torch.Tensor, mask: torch.Tensor, module: LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, biased variance)`` of the masked entries of ``x`` over all ranks' data, as one dataset would give."""
    mask = mask.bool()
    stats = torch.stack([x[mask].double().sum(), x[mask].double().square().sum(), mask.sum().double()])
    stats = all_reduce_mean(stats, module)  # means of sums: the ratios below are the global ones
    count = stats[2].clamp(min=1e-12)
    mean = stats[0] / count
    var = (stats[1] / count - mean.square()).clamp(min=0)
    return mean.to(x.dtype), var.to(x.dtype)


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
    logits_processor: Optional[list] = None,
) -> torch.Tensor:
    """Sampled continuations ``[B, R]`` (``R <= max_new_tokens``) of a left-padded prompt batch.

    Uses ``generate`` with the KV cache; rows that emit ``eos_token_id`` stop there (later columns
    are ``pad_token_id``), and the batch stops once every row has. ``temperature == 0`` decodes
    greedily. Sampling is exactly the policy's softmax at ``temperature`` with nucleus ``top_p``:
    every other processor that ``generate`` would take from the model's saved generation config
    (top-k, repetition penalty, minimum length, ...) is set to its neutral value, because PPO's
    log-probs must be those of the distribution the tokens were drawn from. ``logits_processor``
    runs before the sampling warpers (temperature, top-p) and so sees the raw logits (e.g.
    :class:`lit_rlhf.engines.hf.SampledTokenLogprobs`).

    Single device and DDP call ``generate`` on the local model. A sharded model (FSDP2 or FSDP1)
    is gathered once for the whole call (:func:`gathered_weights`, not once per token) and every
    rank keeps stepping until all ranks are done (``synced_gpus``): ranks whose rows finish early
    would otherwise stop joining the all-gathers and the others would hang.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    sampling = temperature > 0
    config = GenerationConfig(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    sharded = is_sharded(model)
    synced = sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with gathered_weights(model):
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, synced_gpus=synced,
                                logits_processor=LogitsProcessorList(logits_processor or []))
    return output[:, input_ids.shape[1] :]
