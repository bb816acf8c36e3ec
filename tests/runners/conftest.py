"""`make_runner`: the runner tests run once under `Runner` and once under `AsyncRunner`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from hypernodes_chain import AsyncRunner, Runner


class SyncFront:
    """One calling convention for both runners: ``run`` and ``map`` return their results.

    Runner's calls are made as they are; AsyncRunner's are awaited, each in an event loop
    of its own (``asyncio.run``), as a script would. ``runner`` is the runner itself.
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _result(self.runner.run(*args, **kwargs))

    def map(self, *args: Any, **kwargs: Any) -> Any:
        return _result(self.runner.map(*args, **kwargs))


def _result(value: Any) -> Any:
    return asyncio.run(value) if inspect.iscoroutine(value) else value


class RunnerKind:
    """A factory of runners of one class: ``make_runner(cache=..., callbacks=...)`` builds a
    fresh one behind a `SyncFront`."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def serial(self) -> bool:
        """True for `Runner`: one node call at a time, in plan order, one batch after
        another. `AsyncRunner` overlaps independent nodes and two batches of a map, so the
        order in which such calls happen is not part of its results."""
        return self.cls is Runner

    def __call__(self, **kwargs: Any) -> SyncFront:
        return SyncFront(self.cls(**kwargs))

    def __repr__(self) -> str:
        return f"RunnerKind({self.name})"


# module scope: the factory holds no state, and hypothesis tests may use it too
@pytest.fixture(scope="module", params=[Runner, AsyncRunner], ids=lambda cls: cls.__name__)
def make_runner(request: pytest.FixtureRequest) -> RunnerKind:
    """The runner kind of this test, as a factory of runners with sync ``run``/``map``."""
    return RunnerKind(request.param)
