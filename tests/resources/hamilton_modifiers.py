"""A Hamilton dataflow built by function modifiers: ``@parameterize`` (``value`` and
``source``), ``@extract_fields``, ``@pipe_input``/``@pipe_output``/``@step`` and ``@subdag``."""

from __future__ import annotations

from hamilton.function_modifiers import (
    extract_fields,
    parameterize,
    pipe_input,
    pipe_output,
    source,
    step,
    subdag,
    value,
)

from . import hamilton_subdag_parts


def base(seed: int) -> int:
    return seed * 3


@parameterize(
    plus_ten={"amount": value(10)},
    plus_base={"amount": source("base")},
)
def shifted(base: int, amount: int) -> int:
    """{amount} added to base."""
    return base + amount


@extract_fields({"low": int, "high": int})
def bounds(plus_ten: int) -> dict:
    return {"low": plus_ten - 1, "high": plus_ten + 1}


def _double(x: int) -> int:
    return 2 * x


def _add(x: int, k: int) -> int:
    return x + k


@pipe_input(
    step(_double),
    step(_add, k=value(5)),
    step(_add, k=source("low")),
)
def piped(plus_ten: int) -> int:
    """plus_ten doubled, plus 5, plus low."""
    return plus_ten


@subdag(hamilton_subdag_parts, inputs={"start": source("high")}, config={"offset": 7})
def squared_high(inner_offset: int) -> int:
    """The subdag's result, high squared plus 7."""
    return inner_offset


@subdag(hamilton_subdag_parts, inputs={"start": source("low"), "offset": value(-1)})
def squared_low(inner_offset: int) -> int:
    return inner_offset


@pipe_output(step(_add, k=value(100)))
def boosted(high: int) -> int:
    """high doubled, then 100 added after the function."""
    return high * 2


def summary(piped: int, squared_high: int, squared_low: int, plus_base: int) -> tuple:
    return (piped, squared_high, squared_low, plus_base)
