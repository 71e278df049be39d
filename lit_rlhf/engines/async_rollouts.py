"""Bounded-staleness asynchronous rollouts (``batch.max_staleness: 1``): the engine samples rollout ``k + 1`` while
the trainer scores and updates on rollout ``k``.

Timeline of PPO step ``k`` (the policy has had ``k`` updates: version ``k``)::

    take the episodes of prompts k (sampled during step k-1 by version k-1; sampled now if there are none)
    submit prompts k+1 to the engine (a background thread; the engine samples with version k)
    score prompts k's episodes with version k, update            -> version k+1
    wait for prompts k+1's episodes, then sync version k+1 into the engine

So each update uses episodes exactly one version old, except the first rollout and the first of each epoch (the
data module looks ahead only within an epoch), which are sampled synchronously (staleness 0). Weights are never
pushed while the engine generates. The engine must hold its own weights (``RolloutEngine.holds_own_weights``):
vLLM runs its model in processes of its own, :class:`~lit_rlhf.engines.hf_worker.HFWorkerEngine` in a worker
process; the thread here only waits on their blocking calls (which release the GIL).

The loss is AReaL's decoupled PPO objective (Fu et al. 2025, "AReaL: A Large-Scale Asynchronous Reinforcement
Learning System for Language Reasoning", sec. 5): the behaviour policy's log-probs (the engine's) go into
``Episodes.engine_logprobs``, the trainer recomputes ``logprobs`` with the weights at update start (the proximal
policy that PPO clips against), and the truncated importance weight ``min(pi_prox / pi_behav, cap)``
(:mod:`lit_rlhf.engines.correction`, ``correction.truncated_is_cap``) scales each token's advantage.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from lit_rlhf.engines.base import RolloutEngine
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import ConfigError

#: Fields of episodes straight from an engine (nothing scored yet): what a checkpoint keeps of a pending batch.
SAMPLED_FIELDS = (
    "input_ids",
    "attention_mask",
    "response_mask",
    "ended",
    "prompt_length",
    "engine_logprobs",
    "logprobs",
    "entropy",
    "policy_versions",
)


def with_policy_version(episodes: Episodes, version: int) -> Episodes:
    """``episodes`` stamped with the policy version that sampled them (``policy_versions``, one per episode)."""
    versions = torch.full((len(episodes),), version, dtype=torch.long, device=episodes.input_ids.device)
    return episodes.with_values(policy_versions=versions)


def staleness_metrics(episodes: Episodes, version: int) -> dict[str, Tensor]:
    """``rollout/staleness`` (mean) and ``rollout/staleness_max``: how many updates behind ``version`` (the policy
    about to be updated) the policy that sampled ``episodes`` was."""
    staleness = (version - episodes.policy_versions).float()
    return {"rollout/staleness": staleness.mean(), "rollout/staleness_max": staleness.max()}


def as_behaviour(episodes: Episodes) -> Episodes:
    """Stale episodes for the decoupled loss: the sampler's log-probs become the behaviour log-probs
    (``engine_logprobs``) and the trainer's (``logprobs``, the proximal policy) are left to be recomputed."""
    behaviour = episodes.engine_logprobs if episodes.engine_logprobs is not None else episodes.logprobs
    return episodes.with_values(engine_logprobs=behaviour, logprobs=None, entropy=None)


class AsyncRollouts:
    """At most one rollout batch sampled in the background, and the batch it produced until it is taken.

    Args:
        engine: The engine; it must hold its own weights (``holds_own_weights``).
    """

    def __init__(self, engine: RolloutEngine):
        if not engine.holds_own_weights:
            raise ConfigError(
                f"batch.max_staleness 1 needs an engine with its own weights (HFWorkerEngine or VLLMEngine); "
                f"{type(engine).__name__} samples from the training model itself"
            )
        self.engine = engine
        self.executor: Optional[ThreadPoolExecutor] = None
        self.in_flight: Optional[Future] = None
        self.ready: Optional[Episodes] = None
        self.ready_seconds = 0.0  # how long the engine took to sample the ready batch
        self.synced = False

    def step(
        self,
        prompts: dict[str, Any],
        samples_per_prompt: int,
        version: int,
        sampler: Callable[[dict[str, Any], int], Callable[[], Episodes]],
        policy: torch.nn.Module,
    ) -> tuple[Episodes, float]:
        """Steps 1 and 2 of the timeline: the episodes of ``prompts`` for the decoupled loss (:func:`as_behaviour`)
        and the seconds their sampling took; ``prompts["next"]`` (if any) then goes to the engine. ``version``: the
        policy's (rollouts done); ``sampler(prompts, rollout_index)``: the engine call sampling that rollout."""
        sampled = self.take(prompts, samples_per_prompt)
        if sampled is None:  # nothing sampled ahead (first rollout of a run or epoch): sampled now
            self.submit(sampler(prompts, version), version, policy)
            sampled = self.take(prompts, samples_per_prompt)
        if prompts.get("next") is not None:
            self.submit(sampler(prompts["next"], version + 1), version, policy)
        return as_behaviour(sampled[0]), sampled[1]

    def submit(self, sample: Callable[[], Episodes], version: int, policy: torch.nn.Module) -> None:
        """Run ``sample`` (the engine's ``generate`` for the next prompts, seeded) in the background; its episodes
        are stamped with ``version``. The first call loads ``policy``'s weights into the engine here, before the
        thread starts: later syncs happen between batches (:meth:`wait`, then ``sync_weights``)."""
        if self.in_flight is not None or self.ready is not None:
            raise RuntimeError("a rollout batch is already in flight or waiting to be used")
        if not self.synced:
            self.engine.sync_weights(policy)
            self.synced = True
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit-rlhf-rollout")

        def run() -> tuple[Episodes, float]:
            started = time.perf_counter()
            with torch.no_grad():  # grad mode is per thread
                episodes = with_policy_version(sample(), version)
            return episodes, time.perf_counter() - started

        self.in_flight = self.executor.submit(run)

    def wait(self) -> None:
        """Block until the batch in flight (if any) is sampled; it is then ready to be taken."""
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            self.ready, self.ready_seconds = future.result()

    def take(self, prompts: dict[str, Any], samples_per_prompt: int) -> Optional[tuple[Episodes, float]]:
        """The ready batch and the seconds its sampling took, if it was sampled for ``prompts``; None when there is
        none, or when it was sampled for other prompts (an epoch cut short by ``limit_train_batches`` never reaches
        the batch it looked ahead to): that batch is dropped."""
        self.wait()
        episodes, self.ready = self.ready, None
        if episodes is None:
            return None
        device = prompts["input_ids"].device
        episodes = episodes.with_values(
            **{
                name: value.to(device)
                for name in SAMPLED_FIELDS
                if isinstance(value := getattr(episodes, name), Tensor)
            }
        )
        expected = prompts["input_ids"].repeat_interleave(samples_per_prompt, dim=0)
        if episodes.prompts.shape != expected.shape or not torch.equal(episodes.prompts, expected):
            return None
        return episodes, self.ready_seconds

    def state_dict(self) -> dict[str, Any]:
        """The batch sampled ahead (waited for if in flight), for a checkpoint: its weights' version is gone after
        the update, so it is saved rather than regenerated."""
        self.wait()
        if self.ready is None:
            return {}
        fields = {name: _to_cpu(getattr(self.ready, name)) for name in SAMPLED_FIELDS}
        return {"ready": fields, "seconds": self.ready_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("ready") is not None:
            self.ready, self.ready_seconds = Episodes(**state["ready"]), state["seconds"]

    def close(self) -> None:
        """Finish the batch in flight and stop the thread."""
        self.wait()
        if self.executor is not None:
            self.executor.shutdown()
            self.executor = None


def _to_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, Tensor) else value
