"""The core's flows: a plan for one item, a plan over a batch. Scheduling only.

Every flow is a generator, the way httpx writes its auth flow: it *yields* the work that
is ready (a list of `ItemCall`, `ColumnCall`) and *receives* back the pieces that
finished, in any order and any number at a time. A flow decides which step runs when and
when a column can be dropped; the life of each call (cache key, look-up, events, store,
cache write, failure record) is ``_lifecycle``'s. Drivers (``_drive``) execute the work.

`item_flow` runs a plan for one item and returns ``(values, keys)``. `batch_flow` runs a
`BatchTask`: column by column, every column whose inputs are ready at once (so independent
nodes overlap under a concurrent driver); a batch node gets its whole column once, a node
that reads only constants runs once per batch; a column nobody reads any more and that
is not a requested output is dropped as soon as its last reader has run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .. import hashing
from ..events import EventBus, GraphFinished, GraphStarted
from ..plan import Plan
from ._invoke import plan_invokers
from ._keys import node_error
from ._lifecycle import (
    Batch,
    begin_column,
    begin_constant,
    begin_item,
    end_column,
    end_constant,
    end_item,
)
from ._work import BatchOutcome, BatchTask, ColumnCall, Context, Flow, ItemCall, Keys, Work

__all__ = ["batch_columns", "batch_flow", "item_flow"]

_perf = time.perf_counter
KeyColumns = dict[str, list[str | None]]
ItemResult = tuple[dict[str, Any], Keys]


class _Order:
    """Which steps of a plan are ready: a step is ready once every step it waits for is
    done."""

    __slots__ = ("dependents", "ready", "remaining", "waiting")

    def __init__(self, plan: Plan) -> None:
        self.waiting = list(plan.n_deps)
        self.dependents = plan.dependents
        self.ready = [i for i, n in enumerate(self.waiting) if n == 0]
        self.remaining = len(plan.steps)

    def each_ready(self) -> Iterator[int]:
        """The ready steps; a step done during the walk (a cache hit) adds the steps it
        releases to this same walk."""
        ready = self.ready
        yield from ready
        self.ready = []

    def done(self, i: int) -> None:
        self.remaining -= 1
        waiting = self.waiting
        for j in self.dependents[i]:
            waiting[j] -= 1
            if not waiting[j]:
                self.ready.append(j)


# -- one item ----------------------------------------------------------------------------


def item_flow(
    plan: Plan,
    values: dict[str, Any],
    ctx: Context,
    *,
    index: int | None = None,
    path: tuple[str, ...] | None = None,
    keys: Keys | None = None,
) -> Flow[ItemResult]:
    """Run ``plan`` for one item: yields ready calls, returns ``(values, keys)``.

    ``values`` holds the given inputs and is filled with the outputs in place.
    """
    local = ctx.local
    bus = local.bus if local.bus.active else None
    if path is None:
        path = (plan.graph.name,)
    if ctx.cache is not None and keys is None:
        keys = {}
    ilocal = local.interactive
    if plan.simple and local.inline and keys is None and bus is None and ilocal is None:
        return _inline(plan, values, index, path)
    t_graph = _graph_started(bus, plan, path, index)
    steps, invokers, order = plan.steps, plan_invokers(plan), _Order(plan)
    while order.remaining:
        calls: list[Work] = []
        for i in order.each_ready():
            step = steps[i]
            call = ItemCall(
                step, invokers[i], step.fetch(values), index, path, bus, ilocal, i, ctx.settings
            )
            if begin_item(call, ctx, values, keys):
                order.done(i)
            else:
                calls.append(call)
        if not order.remaining:
            break
        for done in (yield calls):
            assert isinstance(done, ItemCall)
            if done.error is not None and bus is not None:
                _graph_failed(bus, plan, path, index, t_graph, done, ctx, values, keys)
            end_item(done, ctx, values, keys)
            order.done(done.pos)
    if bus is not None:
        duration = _perf() - t_graph
        bus.publish(GraphFinished(path=path, graph=plan.graph.name, duration=duration, index=index))
    return values, keys or {}


def _inline(
    plan: Plan, values: dict[str, Any], index: int | None, path: tuple[str, ...]
) -> ItemResult:
    """Nothing to cache, observe or answer, and only plain functions: calling them here
    in plan order is what the driver would do anyway, minus the round trips."""
    for step in plan.steps:
        try:
            values[step.output] = step.node.func(*step.fetch(values))  # type: ignore[index]
        except Exception as exc:
            raise node_error(step, exc, index, path) from exc
    return values, {}


def _graph_started(
    bus: EventBus | None, plan: Plan, path: tuple[str, ...], index: int | None
) -> float:
    if bus is None:
        return 0.0
    event = GraphStarted(
        path=path,
        graph=plan.graph.name,
        inputs=tuple(plan.given),
        outputs=plan.outputs,
        index=index,
        graph_obj=plan.graph,
    )
    bus.publish(event)
    return _perf()


def _graph_failed(
    bus: EventBus,
    plan: Plan,
    path: tuple[str, ...],
    index: int | None,
    t_graph: float,
    call: ItemCall,
    ctx: Context,
    values: dict[str, Any],
    keys: Keys | None,
) -> None:
    """A failed call ends the item's graph: its `NodeFailed`, then `GraphFinished`, then
    the node's error."""
    try:
        end_item(call, ctx, values, keys)
    finally:
        duration = _perf() - t_graph
        event = GraphFinished(
            path=path, graph=plan.graph.name, duration=duration, index=index, error=call.error
        )
        bus.publish(event)


# -- a batch ---------------------------------------------------------------------------


def batch_flow(task: BatchTask) -> Flow[BatchOutcome]:
    """Run one batch task of a map; returns its `BatchOutcome`."""
    ctx = Context(task.settings, task.local)
    return (
        yield from batch_columns(
            task.plan,
            task.columns,
            task.constants,
            ctx,
            indices=task.indices,
            key_columns=task.key_columns,
            constant_keys=task.constant_keys,
        )
    )


def batch_columns(
    plan: Plan,
    columns: dict[str, list[Any]],
    constants: dict[str, Any],
    ctx: Context,
    *,
    indices: list[int],
    path: tuple[str, ...] | None = None,
    key_columns: KeyColumns | None = None,
    constant_keys: Keys | None = None,
    raise_errors: bool | None = None,
) -> Flow[BatchOutcome]:
    """Run ``plan`` over ``len(indices)`` items; returns a `BatchOutcome`.

    ``columns`` maps each varying input to its values (one per item), ``constants``
    the inputs shared by every item.
    """
    if raise_errors is None:
        raise_errors = ctx.on_error == "raise"
    if ctx.cache is not None:
        fingerprint = hashing.fingerprint
        if key_columns is None:
            key_columns = {name: [fingerprint(v) for v in col] for name, col in columns.items()}
        if constant_keys is None:
            constant_keys = {name: fingerprint(v) for name, v in constants.items()}
    path = path or (plan.graph.name,)
    b = Batch(ctx, indices, path, columns, constants, key_columns, constant_keys,
              raise_errors=raise_errors)  # fmt: skip
    steps, invokers, order = plan.steps, plan_invokers(plan), _Order(plan)
    readers, wanted = dict(plan.readers), set(plan.outputs)

    def finish(i: int) -> None:
        order.done(i)
        for s in steps[i].sources:  # the data lifecycle: drop a column after its last read
            readers[s] -= 1
            if not readers[s] and s not in wanted:
                b.columns.pop(s, None)
                if b.key_columns is not None:
                    b.key_columns.pop(s, None)

    running = 0
    while order.remaining:
        work: list[Work] = []
        for i in order.each_ready():
            call = _begin(i, plan, invokers[i], b) if b.alive else None
            if call is None:
                finish(i)
            else:
                work.append(call)
        if not work and not running:
            continue
        running += len(work)
        for done in (yield work):
            running -= 1
            match done:
                case ColumnCall():
                    end_column(done, b)
                    done.release()  # the call may outlive the batch's columns
                case ItemCall():
                    end_constant(done, b)
                case _:
                    raise TypeError(f"a batch flow got back {done!r}")
            finish(done.pos)
    outcome = BatchOutcome(b.columns, b.constants, b.key_columns or {}, b.failures)
    outcome.cache_seconds = b.cache_seconds
    return outcome


def _begin(i: int, plan: Plan, invoker: Any, b: Batch) -> ColumnCall | ItemCall | None:
    """The call of step ``i`` for this batch: once for the batch when it reads only
    constants, else over the rows (None: the cache answered)."""
    step = plan.steps[i]
    if all(s in b.constants for s in step.sources):
        return begin_constant(i, step, invoker, b)
    return begin_column(i, step, invoker, b)
