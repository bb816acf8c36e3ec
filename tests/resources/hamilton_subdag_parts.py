"""The inner dataflow that ``hamilton_modifiers`` reuses twice through ``@subdag``."""

from __future__ import annotations


def inner_square(start: int) -> int:
    return start * start


def inner_offset(inner_square: int, offset: int) -> int:
    return inner_square + offset
