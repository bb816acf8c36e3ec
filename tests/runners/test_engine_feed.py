"""A map whose nodes call engines keeps several batches' prompts at the engine at once.

While one batch waits for its replies, the next batches are already out, under `Runner`
(each batch in a thread of its own) as under `AsyncRunner` (each batch an asyncio task),
and the results still come back in input order. A map of plain nodes is unchanged: under
`Runner` its batches run one after the other in the calling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from hypernodes_chain import AsyncRunner, Graph, MapStarted, NodeFinished, Runner, node
from hypernodes_chain.engines.base import Prompt
from hypernodes_chain.events import EngineStarted, EngineStopped
from hypernodes_chain.llm import llm_node
from hypernodes_chain.runners._base import ENGINE_QUEUE
from support.scripted_engine import ScriptedEngine

WORDS = [f"w{i}" for i in range(40)]
_PATIENCE = 30.0  # seconds a call waits for a second one before it goes on alone


class GatedEngine(ScriptedEngine):
    """Each call waits until ``want`` calls have been at the engine at once (or, if that
    never happens, for `_PATIENCE`): a batch-by-batch map can never get past one."""

    def __init__(self, want: int) -> None:
        super().__init__("upper")
        self.want = want
        self.cond = threading.Condition()
        self.now = self.most = 0
        self.threads: set[str] = set()
        self.reached: asyncio.Event | None = None  # set once `want` calls were at once

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a GatedEngine stays in its process")

    def _arrive(self) -> None:
        with self.cond:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    def _leave(self) -> None:
        with self.cond:
            self.now -= 1

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        self._arrive()
        try:
            with self.cond:
                self.cond.wait_for(lambda: self.most >= self.want, timeout=_PATIENCE)
            return super().generate(prompts, schema=schema, **sampling)
        finally:
            self._leave()

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        self._arrive()
        try:
            if self.reached is None:  # the map's loop: every call waits on it
                self.reached = asyncio.Event()
            if self.most >= self.want:
                self.reached.set()
            with contextlib.suppress(TimeoutError):  # a call that waits alone goes on
                await asyncio.wait_for(self.reached.wait(), _PATIENCE)
            return ScriptedEngine.generate(self, prompts, schema=schema, **sampling)
        finally:
            self._leave()


@llm_node(engine="gate", output_name="loud")
def loud(word: str) -> str:
    return f"{word}!"


@node
def size(loud: str) -> int:
    return len(loud)


GRAPH = Graph([loud, size], name="feed")
EXPECTED = [{"loud": f"{w.upper()}!", "size": len(w) + 1} for w in WORDS]


def _map(runner: Runner | AsyncRunner, **kwargs: Any) -> Any:
    call = runner.map(GRAPH, {"word": WORDS}, map_over="word", batch_size=4, **kwargs)
    return asyncio.run(call) if isinstance(runner, AsyncRunner) else call


@pytest.mark.parametrize(
    "make",
    [Runner, lambda **kw: Runner(max_workers=2, **kw), AsyncRunner],
    ids=["Runner", "Runner(max_workers=2)", "AsyncRunner"],
)
def test_an_engine_map_keeps_several_batches_at_the_engine(make: Any) -> None:
    engine = GatedEngine(want=3)
    runner = make(engines={"gate": engine})
    assert _map(runner) == EXPECTED  # in input order, whichever batch finished first
    assert engine.most >= 3


def test_events_of_threaded_batches_reach_subscribers_in_the_calling_thread() -> None:
    seen: list[tuple[Any, str]] = []
    runner = Runner(engines={"gate": GatedEngine(want=2)}, callbacks=[
        lambda e: seen.append((e, threading.current_thread().name))
    ])  # fmt: skip
    assert _map(runner) == EXPECTED
    finished = [e for e, _ in seen if isinstance(e, NodeFinished) and e.node == "loud"]
    assert sum(e.n_items for e in finished) == len(WORDS)
    # engine starts and stops are told by the broker as they happen, from where they happen
    ours = {name for e, name in seen if not isinstance(e, (EngineStarted, EngineStopped))}
    assert ours == {threading.current_thread().name}


def test_a_failing_engine_batch_fails_its_items_only_under_collect() -> None:
    class Flaky(GatedEngine):
        def generate(self, prompts: Sequence[Prompt], **kw: Any) -> list[str | Exception]:
            if any("w5!" in str(p) for p in prompts):
                self._arrive()  # counts as a call at the engine, then breaks
                self._leave()
                raise ConnectionError("engine went away")
            return super().generate(prompts, **kw)

    rows = _map(Runner(engines={"gate": Flaky(want=2)}), on_error="collect")
    failed = [k for k, r in enumerate(rows) if not isinstance(r, dict)]
    assert failed == [4, 5, 6, 7]  # the batch of w5
    assert [r for k, r in enumerate(rows) if k not in failed] == [
        e for k, e in enumerate(EXPECTED) if k not in failed
    ]


def test_a_plain_map_runs_its_batches_in_the_calling_thread() -> None:
    threads: set[str] = set()

    @node
    def where(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x

    events: list[Any] = []
    rows = Runner(callbacks=[events.append]).map(
        Graph([where]), {"x": list(range(10))}, map_over="x", batch_size=2
    )
    assert rows == [{"where": x} for x in range(10)]
    assert threads == {threading.current_thread().name}
    assert any(isinstance(e, MapStarted) for e in events)


def test_how_many_batches_an_engine_map_keeps_out() -> None:
    from hypernodes_chain.plan import build_plan

    plan = build_plan(GRAPH, None, {"word"})
    plain = build_plan(Graph([size]), None, {"loud"})
    runner = Runner()
    assert runner._map_in_flight(plain, 4) == 1
    assert runner._map_in_flight(plan, ENGINE_QUEUE) == 2
    assert runner._map_in_flight(plan, ENGINE_QUEUE // 4) == 4
    assert runner._map_in_flight(plan, 1) == 16


def test_the_node_adds_no_limit_of_its_own_to_a_users_engine() -> None:
    """``max_concurrency`` is the engine's to keep: an engine that keeps none is called by
    several batches at once, whatever number it declares."""
    engine = GatedEngine(want=2)
    engine.max_concurrency = 1
    assert _map(AsyncRunner(engines={"gate": engine})) == EXPECTED
    assert engine.most >= 2


def test_runner_keeps_every_batch_of_its_window_at_the_engine() -> None:
    """All the batches an engine map keeps out are at the engine at once under `Runner`,
    whatever the number of CPUs (a default-sized thread pool held back all but cpus + 4)."""
    from hypernodes_chain.plan import build_plan

    words = [f"w{i}" for i in range(40)]
    plan = build_plan(GRAPH, None, {"word"})
    window = Runner()._map_in_flight(plan, 2)
    engine = GatedEngine(want=window)
    rows = Runner(engines={"gate": engine}).map(
        GRAPH, {"word": words}, map_over="word", batch_size=2
    )
    assert rows == [{"loud": f"{w.upper()}!", "size": len(w) + 1} for w in words]
    assert window == 16 and engine.most == window
