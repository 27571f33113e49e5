"""Config value checks shared by every config class: one-line :class:`ConfigError` messages
that name the field, its value and what is allowed."""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

from fedgmi.errors import ConfigError

MAX_SEED = 2**32 - 1
"""The largest seed (numpy's and Lightning's seeds are 32-bit)."""


def is_int(value: object) -> TypeGuard[int]:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise ConfigError unless ``value`` is an integer >= ``low`` (and <= ``high`` if given)."""
    if not is_int(value) or value < low or (high is not None and value > high):
        allowed = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} = {value!r} must be an integer {allowed}")


def check_number(name: str, value: object, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number in the interval given (closed
    unless ``low_open`` / ``high_open``)."""
    ok = is_real(value) and math.isfinite(value) and low <= value <= high
    ok = ok and not (low_open and value == low) and not (high_open and value == high)
    if not ok:
        if math.isinf(high) and math.isinf(low):
            allowed = "a finite number"
        elif math.isinf(high):
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif math.isinf(low):
            allowed = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            allowed = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} = {value!r} must be {allowed}")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r}; choose one of: {', '.join(allowed)}")
