"""A Hamilton module with a cycle (``p -> q -> p``) next to an acyclic function ``a``."""

from __future__ import annotations


def a(x: int) -> int:
    return x + 1


def p(q: int) -> int:
    return q


def q(p: int) -> int:
    return p
