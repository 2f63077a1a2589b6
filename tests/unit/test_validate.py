"""The numeric checks every input goes through (CLI, nodes, engine): what is let through,
what is refused, and the words the user reads."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coral_core.errors import InputError
from coral_core.validate import finite, whole


@pytest.mark.parametrize("check,value,low,high,message", [
    (finite, 6, None, 5, "x must be in -inf..5, got 6"),
    (finite, -1, 0, None, "x must be in 0..inf, got -1"),
    (finite, 2.5, 3, 4, "x must be in 3..4, got 2.5"),
    (finite, float("nan"), 0, 1, "x must be a finite number, got nan"),
    (finite, float("inf"), None, None, "x must be a finite number, got inf"),
    (finite, "abc", None, None, "x must be a number, got 'abc'"),
    (finite, None, None, None, "x must be a number, got None"),
    (whole, True, 1, None, "x must be a whole number, got True"),
    (whole, [3], 1, None, "x must be a whole number, got [3]"),
    (whole, 3.5, 1, None, "x must be a whole number, got 3.5"),
    (whole, "3.0", 1, None, "x must be a whole number, got '3.0'"),
    (whole, 6, None, 5, "x must be in ..5, got 6"),
    (whole, 0, 1, None, "x must be in 1.., got 0"),
    (whole, 9, 1, 8, "x must be in 1..8, got 9"),
])
def test_a_refusal_names_the_input_its_range_and_the_value(check, value, low, high,
                                                           message) -> None:
    with pytest.raises(InputError) as info:
        check("x", value, low, high)
    assert str(info.value) == message


@given(low=st.floats(-1e6, 1e6), width=st.floats(0, 1e6))
def test_finite_bounds_are_inclusive(low: float, width: float) -> None:
    high = low + width
    assert finite("x", low, low, high) == low and finite("x", high, low, high) == high
    assert finite("x", "1.5") == 1.5 and math.isclose(finite("x", 1e300), 1e300)


@given(low=st.integers(-1000, 1000), width=st.integers(0, 1000))
def test_whole_bounds_are_inclusive_and_exact_floats_and_digits_pass(low: int,
                                                                     width: int) -> None:
    high = low + width
    assert whole("n", low, low, high) == low and whole("n", high, low, high) == high
    assert whole("n", float(high), low, high) == high and whole("n", str(low), low, high) == low
    assert whole("n", -5, None, None) == -5
