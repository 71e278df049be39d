"""Random state for exact resumes: the global generators in a checkpoint, and blocks that draw from their own seed."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch


def rng_states() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, Python), for a checkpoint."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (CUDA states only when the device count matches)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The block draws from a generator seeded with ``seed``; the global RNG is untouched afterwards.

    Sampling a rollout this way makes it a function of (seed, rollout index, rank) alone, so a
    resumed run samples exactly what the uninterrupted run would have.
    """
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
