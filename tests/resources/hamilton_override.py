"""A Hamilton chain ``a -> b -> c``: giving ``b`` as well as ``a`` is ambiguous."""

from __future__ import annotations


def b(a: int) -> int:
    return a + 1


def c(b: int) -> int:
    return b * 10
