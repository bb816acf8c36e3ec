"""Shared fixtures: small graphs built from tiny decorated functions, and a tiny random Llama
(`hypernodes_chain.engines.tiny`) for the engine and LLM node tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hypernodes_chain import Callback, Graph, node
from hypernodes_chain.engines.tiny import build_tiny_model


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


def build_tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    """`build_tiny_model`, skipping the test when torch or transformers is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_model(folder, seed=seed)


@pytest.fixture(scope="session")
def build_llama() -> Callable[..., Path]:
    """`build_tiny_llama` itself, for tests that need another model folder."""
    return build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny random Llama (skips when torch or transformers is missing)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
