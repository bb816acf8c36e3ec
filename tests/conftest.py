"""Shared fixtures: small graphs built from tiny decorated functions."""

from __future__ import annotations

import pytest

from hypernodes_chain import Callback, Graph, node


@node(output_name="a")
def add_one(x: int) -> int:
    return x + 1


@node(output_name="b")
def double(a: int) -> int:
    return a * 2


@node(output_name="c")
def minus_three(b: int) -> int:
    return b - 3


@pytest.fixture
def chain() -> Graph:
    """x -> a=x+1 -> b=a*2 -> c=b-3"""
    return Graph(nodes=[add_one, double, minus_three], name="chain")


class Recorder(Callback):
    """Keeps every event it sees, in order."""

    def __init__(self) -> None:
        self.events: list = []

    def on_event(self, event) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
