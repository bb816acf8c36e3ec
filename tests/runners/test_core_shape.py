"""The core's shape: flows that take finished work in any order, batch tasks that travel,
timeouts owned by the invoker, intermediate columns dropped after their last reader."""

from __future__ import annotations

import asyncio
import gc
import pickle
import time
import weakref
from typing import Any

import pytest

from hypernodes_chain import AsyncRunner, Graph, ItemFailure, MemoryCache, NodeError, Runner, node
from hypernodes_chain.plan import build_plan
from hypernodes_chain.runners._drive import SyncDriver
from hypernodes_chain.runners._flows import batch_flow
from hypernodes_chain.runners._map import map_flow
from hypernodes_chain.runners._work import BatchTask, Context, Local, Settings


@node(output_name="a")
def add_one(x: int) -> int:
    if x == 13:
        raise ValueError("13 is unlucky")
    return x + 1


@node(output_name="b")
def square(x: int) -> int:
    return x * x


@node(output_name="c")
def total(a: int, b: int) -> int:
    return a + b


@node(output_name="d", batch=True)
def doubled(c: list[int]) -> list[Any]:
    return [ValueError(f"odd batch item {v}") if v == 21 else 2 * v for v in c]


@node(output_name="e")
async def later(d: int) -> int:
    await asyncio.sleep(0)
    return d - 1


INNER = Graph([square], name="inner")
GRAPH = Graph([add_one, INNER.as_node(name="nested"), total, doubled, later], name="shape")


class ShuffledDriver(SyncDriver):
    """Sends finished work back one piece at a time, last first: as a remote driver
    (Dask) would, with results arriving out of order."""

    def execute(self, work: list[Any]) -> list[Any]:
        held: list[Any] = self.__dict__.setdefault("held", [])
        for piece in work:
            self.run(piece)
        held.extend(work)
        return [held.pop()] if held else []


def test_flows_take_finished_work_out_of_order_one_at_a_time() -> None:
    inputs = {"x": list(range(40))}
    expected = Runner().map(GRAPH, inputs, map_over="x", batch_size=7, on_error="collect")
    plan = build_plan(GRAPH, None, inputs)
    ctx = Context(Settings(cache=MemoryCache(), on_error="collect"), Local())
    flow = map_flow(plan, inputs, ("x",), "zip", ctx, batch_size=7, in_flight=3)
    driver = ShuffledDriver()
    rows: list[Any] = []
    batches = driver.batches(flow)
    while True:
        try:
            rows += next(batches)
        except StopIteration:
            break

    def plain(row: Any) -> Any:
        return (row.index, row.node, type(row.error)) if isinstance(row, ItemFailure) else row

    assert [plain(r) for r in rows] == [plain(r) for r in expected]
    assert plain(rows[13]) == (13, "add_one", ValueError)
    assert plain(rows[4]) == (4, "doubled", ValueError)  # a batch node failed one item (c == 21)
    assert rows[12] == {"a": 13, "b": 144, "c": 157, "d": 314, "e": 313}


def test_a_batch_task_and_its_outcome_pickle() -> None:
    inputs = {"x": [1, 2, 3]}
    plan = build_plan(GRAPH, None, inputs)
    task = BatchTask(plan, {"x": [1, 2, 3]}, {}, [10, 11, 12],
                     Settings(on_error="collect"), Local())  # fmt: skip
    copy = pickle.loads(pickle.dumps(task))
    assert copy.plan.outputs == plan.outputs and copy.indices == [10, 11, 12]
    assert copy.local.bus.active is False  # the local part stays behind
    copy.outcome = SyncDriver().drive(batch_flow(copy))
    back = pickle.loads(pickle.dumps(copy))
    assert back.outcome.column("e", 3) == [2 * (x + 1 + x * x) - 1 for x in (1, 2, 3)]
    assert back.outcome.failures == {}


@node(output_name="slow")
async def slow(x: float) -> float:
    await asyncio.sleep(x)
    return x


SLOW = Graph([node(slow.func, output_name="slow", timeout=0.2)])


@pytest.mark.parametrize("runner", ["sync", "async"])
def test_an_async_node_past_its_timeout_fails_only_its_item(runner: str) -> None:
    inputs = {"x": [0.0, 5.0, 0.01]}
    t0 = time.perf_counter()
    if runner == "async":
        out = asyncio.run(AsyncRunner().map(SLOW, inputs, map_over="x", on_error="collect"))
    else:
        out = Runner().map(SLOW, inputs, map_over="x", on_error="collect")
    assert time.perf_counter() - t0 < 3  # the 5 s call was cancelled
    assert out[0] == {"slow": 0.0} and out[2] == {"slow": 0.01}
    assert isinstance(out[1], ItemFailure) and isinstance(out[1].error, TimeoutError)
    assert "did not finish within its timeout of 0.2 s" in str(out[1].error)
    with pytest.raises(NodeError, match="item 1 failed with TimeoutError"):
        Runner().map(SLOW, inputs, map_over="x")


def test_timeout_needs_an_async_node() -> None:
    with pytest.raises(TypeError, match="timeout= needs an async def node"):
        node(lambda x: x, output_name="y", timeout=1)
    with pytest.raises(ValueError, match="positive number"):
        node(slow.func, output_name="y", timeout=0)


class Big:
    """A large intermediate value whose lifetime the test watches."""


def test_an_intermediate_column_is_dropped_after_its_last_reader() -> None:
    alive: list[weakref.ref[Big]] = []
    seen: list[int] = []

    @node(output_name="big")
    def make(x: int) -> Big:
        value = Big()
        alive.append(weakref.ref(value))
        return value

    @node(output_name="used")
    def use(big: Big) -> int:
        return 1

    @node(output_name="after")
    def after(used: int) -> int:
        gc.collect()
        seen.append(sum(r() is not None for r in alive))
        return used

    graph = Graph([make, use, after])
    out = Runner().map(graph, {"x": range(10)}, map_over="x", output_name="after")
    assert out == [{"after": 1}] * 10
    # `after` runs once for its column, when no `big` value of the batch is alive any more
    assert seen == [0] * 10


def test_a_requested_intermediate_is_kept() -> None:
    @node(output_name="big")
    def make(x: int) -> int:
        return x * 10

    @node(output_name="used")
    def use(big: int) -> int:
        return big + 1

    out = Runner().map(Graph([make, use]), {"x": [1, 2]}, map_over="x")
    assert out == [{"big": 10, "used": 11}, {"big": 20, "used": 21}]


def test_independent_async_nodes_of_a_map_item_overlap() -> None:
    """Each node waits for the other to have started: only overlap lets them finish."""
    started: dict[tuple[str, int], asyncio.Event] = {}

    def flag(name: str, x: int) -> asyncio.Event:
        return started.setdefault((name, x), asyncio.Event())

    async def meet(me: str, other: str, x: int) -> int:
        flag(me, x).set()
        await flag(other, x).wait()
        return x

    @node(output_name="p", timeout=5)
    async def first(x: int) -> int:
        return await meet("first", "second", x)

    @node(output_name="q", timeout=5)
    async def second(x: int) -> int:
        return -(await meet("second", "first", x))

    graph = Graph([first, second])
    out = asyncio.run(AsyncRunner().map(graph, {"x": [1, 2]}, map_over="x", batch_size=1))
    assert out == [{"p": 1, "q": -1}, {"p": 2, "q": -2}]


def test_editing_a_model_a_node_captures_changes_its_fingerprint(tmp_path: Any) -> None:
    """A node kind's fingerprint parts include the classes it closes over by definition."""
    import importlib.util
    import sys

    from hypernodes_chain.runners._keys import node_fingerprint

    source = """
from pydantic import BaseModel
from hypernodes_chain import node

class Summary(BaseModel):
    title: str
    {extra}

def make():
    model = Summary

    @node(output_name="s")
    def summarize(text: str) -> dict:
        return model(title=text).model_dump()

    return summarize
"""
    prints = []
    for k, extra in enumerate(["", "score: float = 0.0"]):
        path = tmp_path / f"v{k}" / "edited_models.py"  # one module name, two versions
        path.parent.mkdir()
        path.write_text(source.replace("{extra}", extra))
        spec = importlib.util.spec_from_file_location("edited_models", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        prints.append(node_fingerprint(module.make()))
    sys.modules.pop("edited_models", None)
    assert None not in prints and prints[0] != prints[1]


def test_runner_settings_changed_after_construction_count() -> None:
    calls: list[int] = []

    @node(output_name="y")
    def counted(x: int) -> int:
        calls.append(x)
        return x

    runner = Runner()
    runner.cache = MemoryCache()
    seen: list[Any] = []
    runner.callbacks.append(seen.append)
    graph = Graph([counted])
    assert runner.map(graph, {"x": [1, 2]}, map_over="x") == [{"y": 1}, {"y": 2}]
    assert runner.map(graph, {"x": [1, 2]}, map_over="x") == [{"y": 1}, {"y": 2}]
    assert calls == [1, 2]  # the second map came from the cache set after construction
    assert any(type(e).__name__ == "MapFinished" for e in seen)


def test_a_blocking_sync_node_under_asyncrunner_never_blocks_the_loop() -> None:
    """The sync node's first rows wait for the async node, which needs a free loop."""
    import threading

    loop_ran = threading.Event()

    @node(output_name="blocked")
    def blocking(x: int) -> bool:
        return loop_ran.wait(timeout=5)  # True only if the loop got to `free` meanwhile

    @node(output_name="free")
    async def free(x: int) -> int:
        loop_ran.set()
        return x

    graph = Graph([blocking, free])
    out = asyncio.run(AsyncRunner().map(graph, {"x": [1, 2, 3]}, map_over="x"))
    assert out == [{"blocked": True, "free": x} for x in (1, 2, 3)]


def test_a_slow_first_batch_bounds_how_far_the_map_reads_ahead() -> None:
    """Finished batches waiting for an earlier one count toward the in-flight window."""
    drawn: list[int] = []
    seen_when_released: list[int] = []

    def numbers():
        for i in range(40):
            drawn.append(i)
            yield i

    class HoldFirst(SyncDriver):
        held: Any = None

        def execute(self, work: list[Any]) -> list[Any]:
            for piece in work:
                self.run(piece)
            if self.held is None and work and type(work[0]) is BatchTask:  # a map batch
                self.held, work = work[0], work[1:]
            if not work and self.held is not None:  # the flow waits: let the first one go
                seen_when_released.append(len(drawn))
                work, self.held = [self.held], False
            return work

    inputs = {"x": numbers()}
    plan = build_plan(GRAPH, None, inputs)
    ctx = Context(Settings(on_error="collect"), Local())
    flow = map_flow(plan, inputs, ("x",), "zip", ctx, batch_size=4, in_flight=2)
    rows = [row for batch in SyncDriver.batches(HoldFirst(), flow) for row in batch]
    assert len(rows) == 40
    assert seen_when_released == [8]  # two batches of 4 out, no more, while the first waited


POOLED = """
from hypernodes_chain import Graph, node, Runner
@node(output_name="a")
def a(x): return x + 1
@node(output_name="b")
def b(x): return x * 2
@node(output_name="c")
def c(x): return x - 1
with Runner(max_workers=2) as runner:
    out = runner.map(Graph([a, b, c]), {"x": list(range(5000))}, map_over="x")
print(out[-1])
"""


def test_a_small_pool_runs_more_independent_columns_than_it_has_threads() -> None:
    """Pool threads never wait on the pool (they used to, and three columns on two threads
    deadlocked); a subprocess, so a regression fails on its timeout instead of hanging."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", POOLED], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'a': 5000, 'b': 9998, 'c': 4998}"
