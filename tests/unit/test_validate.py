"""The numeric checks every input goes through (CLI, nodes, engine): what is let through,
what is refused, and the words the user reads."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coral_core.errors import InputError
from coral_core.validate import finite, whole


@pytest.mark.parametrize("value,low,high,message", [
    (6, None, 5, "x must be in -inf..5, got 6"),
    (-1, 0, None, "x must be in 0..inf, got -1"),
    (2.5, 3, 4, "x must be in 3..4, got 2.5"),
    (float("nan"), 0, 1, "x must be a finite number, got nan"),
    (float("inf"), None, None, "x must be a finite number, got inf"),
    ("abc", None, None, "x must be a number, got 'abc'"),
    (None, None, None, "x must be a number, got None"),
])
def test_finite_refuses_with_the_inputs_name_its_range_and_value(value, low, high,
                                                                message) -> None:
    with pytest.raises(InputError) as info:
        finite("x", value, low, high)
    assert str(info.value) == message


@given(low=st.floats(-1e6, 1e6), width=st.floats(0, 1e6))
def test_finite_bounds_are_inclusive(low: float, width: float) -> None:
    high = low + width
    assert finite("x", low, low, high) == low and finite("x", high, low, high) == high
    assert finite("x", "1.5") == 1.5 and math.isclose(finite("x", 1e300), 1e300)


@pytest.mark.parametrize("value,low,high,message", [
    (True, 1, None, "n must be a whole number, got True"),
    ([3], 1, None, "n must be a whole number, got [3]"),
    (3.5, 1, None, "n must be a whole number, got 3.5"),
    ("3.0", 1, None, "n must be a whole number, got '3.0'"),
    (6, None, 5, "n must be in ..5, got 6"),
    (0, 1, None, "n must be in 1.., got 0"),
    (9, 1, 8, "n must be in 1..8, got 9"),
])
def test_whole_refuses_with_the_inputs_name_its_range_and_value(value, low, high,
                                                               message) -> None:
    with pytest.raises(InputError) as info:
        whole("n", value, low, high)
    assert str(info.value) == message


@given(low=st.integers(-1000, 1000), width=st.integers(0, 1000))
def test_whole_bounds_are_inclusive_and_exact_floats_and_digits_pass(low: int,
                                                                     width: int) -> None:
    high = low + width
    assert whole("n", low, low, high) == low and whole("n", high, low, high) == high
    assert whole("n", float(high), low, high) == high and whole("n", str(low), low, high) == low
    assert whole("n", -5, None, None) == -5
