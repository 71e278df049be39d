"""A reward computed by a user's Python function: rule-based and verifiable rewards without a reward model."""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import ConfigError
from lit_rlhf.rewards.base import Reward, RewardError, describe_record


def import_function(path: str) -> Callable[..., Any]:
    """The callable at ``package.module:function`` (or ``package.module.function``)."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ConfigError(f"reward function {path!r}: expected 'package.module:function' or 'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"reward function {path!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"reward function {path!r}: module {module_name!r} has no callable {attribute!r}")
    return function


class FunctionReward(Reward):
    """Scores each response with ``function(prompt=..., response=..., record=...) -> float``.

    ``record`` is the prompt's own record (all its fields, e.g. ``answer``), so a verifiable reward
    checks the response against it. Example, ``my_rewards.py``::

        def exact_answer(prompt: str, response: str, record: dict) -> float:
            return float(response.strip() == str(record["answer"]))

    A function that raises, or returns something that is not a finite number, stops the run with
    the component and the record named.

    Args:
        function: Dotted path of the function, ``package.module:function``.
        weight: Multiplies the score in the sum of reward components.
        name: Name in the logs. Default: the function's name.
    """

    def __init__(self, function: str, weight: float = 1.0, name: Optional[str] = None):
        self.function_path = function
        self.function = import_function(function)
        super().__init__(weight=weight, name=name)

    def default_name(self) -> str:
        return getattr(self.function, "__name__", "function")

    def forward(self, episodes: Episodes) -> Tensor:
        scores = []
        records = episodes.records or [{}] * len(episodes)
        for prompt, response, record in zip(episodes.prompt_texts, episodes.response_texts, records):
            try:
                value = self.function(prompt=prompt, response=response, record=record)
            except Exception as e:
                raise RewardError(
                    f"reward '{self.name}' ({self.function_path}) raised {type(e).__name__}: {e} "
                    f"on record {describe_record(record)}"
                ) from e
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RewardError(
                    f"reward '{self.name}' ({self.function_path}) returned {value!r}, not a finite number, "
                    f"on record {describe_record(record)}"
                )
            scores.append(float(value))
        return torch.tensor(scores, device=episodes.input_ids.device)
