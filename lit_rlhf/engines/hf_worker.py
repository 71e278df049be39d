"""Hugging Face ``generate`` in a worker process of its own, on its own copy of the policy's weights: the engine
that lets CPU (or one-GPU) runs sample the next rollout while the trainer updates (``batch.max_staleness: 1``,
:mod:`lit_rlhf.engines.async_rollouts`).

The worker is a ``torch.multiprocessing`` process started with ``spawn`` (so the training program must be
import-safe, as with vLLM: an ``if __name__ == "__main__":`` guard; the ``lit-rlhf`` command is). It loads the
policy's directory, sets its own torch thread count (inside the worker only), and serves two requests from a queue:
load weights (:meth:`HFWorkerEngine.sync_weights`, one decoder layer per message) and generate (seeded per call,
so a rollout is a function of its seed alone). Its log-probs come from a copy of the weights in another process,
so they are reported as ``Episodes.engine_logprobs`` and PPO scores the tokens with the trainer.
"""

from __future__ import annotations

import queue
from typing import Any, Optional

import torch
from torch import Tensor

from lit_rlhf.engines.base import RolloutEngine, SamplingSettings, plain_weights_by_layer
from lit_rlhf.engines.hf import hf_generate
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import check_option

#: Seconds between checks that the worker is still alive while waiting for its reply.
_POLL_S = 1.0


def serve(source: str, threads: int, requests, replies) -> None:
    """The worker process: load the policy directory ``source``, then answer ``requests`` until ``stop``."""
    from lit_rlhf.models.loading import load_causal_lm

    torch.set_num_threads(threads)  # this process only: the trainer's thread count is left alone
    model = load_causal_lm(source, trainable=False)
    while True:
        kind, payload = requests.get()
        if kind == "stop":
            return
        try:
            if kind == "load":
                unexpected = model.load_state_dict(payload, strict=False).unexpected_keys
                if unexpected:
                    raise KeyError(f"weights the worker's model does not have: {unexpected[:3]}")
                replies.put(("ok", None))
            elif kind == "generate":
                prompts, num_samples, settings, eos_token_id, pad_token_id, seed = payload
                torch.manual_seed(seed)
                episodes = hf_generate(
                    model, prompts, num_samples, settings, eos_token_id=eos_token_id, pad_token_id=pad_token_id
                )
                replies.put(("ok", episodes))
        except Exception as error:  # reported to the trainer, which raises it
            replies.put(("error", f"{type(error).__name__}: {error}"))


class HFWorkerEngine(RolloutEngine):
    """Hugging Face ``generate`` in a worker process with its own threads and its own copy of the policy's weights,
    loaded after every rollout's updates. The engine for ``batch.max_staleness: 1`` without vLLM; evaluation samples
    the evaluated (EMA) weights in the training process, as :class:`~lit_rlhf.engines.hf.HFEngine` does.

    Args:
        threads: Torch threads of the worker process (the trainer keeps its own).
    """

    holds_own_weights = True

    def __init__(self, threads: int = 1):
        check_option("engine.init_args.threads", threads, min=1, integer=True)
        self.threads = threads
        self.process = self.requests = self.replies = None
        self.stale = True  # the worker holds the directory's weights, not (yet) the policy's

    def setup(self, policy: torch.nn.Module, source: str) -> None:
        """Start the worker on the policy's directory ``source`` (its weights are replaced before the first rollout)."""
        if self.process is not None:
            return
        context = torch.multiprocessing.get_context("spawn")
        self.requests, self.replies = context.Queue(), context.Queue()
        self.process = context.Process(
            target=serve, args=(source, self.threads, self.requests, self.replies), daemon=True, name="lit-rlhf-hf"
        )
        self.process.start()
        self.stale = True

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
            return hf_generate(
                model, prompts, num_samples, settings, eos_token_id=eos_token_id, pad_token_id=pad_token_id
            )
        if self.stale:
            self.sync_weights(model)
        seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
        device = prompts["input_ids"].device
        request = {key: prompts[key].cpu() for key in ("input_ids", "attention_mask")}
        self.requests.put(("generate", (request, num_samples, settings, eos_token_id, pad_token_id, seed)))
        episodes: Episodes = self._reply()
        # Sampled by a copy of the weights in another process: the trainer scores the tokens itself.
        return Episodes(
            input_ids=episodes.input_ids.to(device),
            attention_mask=episodes.attention_mask.to(device),
            response_mask=episodes.response_mask.to(device),
            ended=episodes.ended.to(device),
            prompt_length=episodes.prompt_length,
            engine_logprobs=episodes.logprobs.to(device),
        )

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Send the policy's current weights to the worker, one decoder layer at a time (copies: the trainer goes on
        updating its own), and wait until it has loaded them all."""
        sent = 0
        for weights in plain_weights_by_layer(policy):
            self.requests.put(("load", {key: value.detach().to("cpu", copy=True) for key, value in weights.items()}))
            sent += 1
        for _ in range(sent):
            self._reply()
        self.stale = False

    def close(self) -> None:
        """Stop the worker (it also stops when this process exits)."""
        if self.process is not None:
            self.requests.put(("stop", None))
            self.process.join(timeout=10)
            self.process = None

    def _reply(self) -> Any:
        while True:
            try:
                status, value = self.replies.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(f"the HF generation worker exited (code {self.process.exitcode})") from None
                continue
            if status == "error":
                raise RuntimeError(f"the HF generation worker failed: {value}")
            return value
