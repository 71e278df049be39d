"""Errors a user fixes in their config, data or command: the CLI prints them as one line instead of a traceback
and exits with status 2."""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional, TypeVar

Number = TypeVar("Number", int, float, None)


class UserError(Exception):
    """Base of every error a user fixes in their config, data or command. Its message is one clear line that names
    what is wrong and what to change; ``lit-rlhf`` prints it (``lit-rlhf: error: ...``) and exits with status 2.

    Subclasses: :class:`ConfigError`, ``RecordError`` (bad data records), ``ModelSourceError`` (a model that cannot
    be loaded), ``RewardError`` (a reward component failed), a chained stage's ``StageFailed``
    (``lit_rlhf.recipes.stages``). A run stopped by a guard after it started well is not one of them
    (``TrainingStopped``, exit status 3).
    """


class ConfigError(UserError, ValueError):
    """A configuration that cannot work, with what to change."""


def describe_range(
    min: Optional[float], max: Optional[float], *, min_open: bool = False, max_open: bool = False
) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``: the allowed range as people write it."""
    if min is not None and max is not None:
        return f"in {'(' if min_open else '['}{min:g}, {max:g}{')' if max_open else ']'}"
    if min is not None:
        return f"{'>' if min_open else '>='} {min:g}"
    if max is not None:
        return f"{'<' if max_open else '<='} {max:g}"
    return "a finite number"


def check_option(
    name: str,
    value: Number,
    *,
    min: Optional[float] = None,
    max: Optional[float] = None,
    min_open: bool = False,
    max_open: bool = False,
    integer: bool = False,
) -> Number:
    """``value`` unchanged if it is a finite number in the range, else a one-line :class:`ConfigError`.

    ``None`` passes (an unset optional option). ``min_open``/``max_open`` exclude the bound itself, so
    ``check_option("ema_decay", d, min=0, max=1, max_open=True)`` allows ``[0, 1)``.

    Example message: ``batch_size must be >= 1, got 0``.
    """
    if value is None:
        return value
    allowed = describe_range(min, max, min_open=min_open, max_open=max_open)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, Real) or (integer and not float(value).is_integer()):
        raise ConfigError(f"{name} must be {kind} {allowed}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be {allowed}, got {value}")
    too_low = min is not None and (value <= min if min_open else value < min)
    too_high = max is not None and (value >= max if max_open else value > max)
    if too_low or too_high:
        raise ConfigError(f"{name} must be {allowed}, got {value:g}")
    return value
