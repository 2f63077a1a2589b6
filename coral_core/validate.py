"""Checks of numeric inputs at the engine's boundary, shared by the CLI, the nodes and the
engine itself, so that NaN, infinity or an absurd value is refused with the input's name
instead of becoming a black image with exit status 0."""
from __future__ import annotations

import math
from typing import Any

from .errors import InputError


def finite(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float, refused unless finite and within [low, high]."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        span = f"{'-inf' if low is None else f'{low:g}'}..{'inf' if high is None else f'{high:g}'}"
        raise InputError(f"{name} must be in {span}, got {number:g}")
    return number


def whole(name: str, value: Any, low: int | None = 1, high: int | None = None) -> int:
    """``value`` as an int, refused unless an integer within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a whole number, got {value!r}") from exc
    if isinstance(value, float) and value != number:
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        span = f"{'' if low is None else low}..{'' if high is None else high}"
        raise InputError(f"{name} must be in {span}, got {number}")
    return number


MAX_STEPS = 1_000_000
MAX_STRENGTH = 100.0
