"""How each kind of node is called: one invoker per kind, ONE body per call shape.

An invoker's body is a generator that yields effects (``_effects``) and receives their
results, so the same body runs under every driver. An item body returns the node's value
(or raises); a column body returns ``(values, failed)``, ``failed`` mapping row positions
to exceptions: the single place where a column's failures are counted. Invokers are
chosen once per plan step (`invoker_for`); a node kind registers its own
(`register_invoker`: nested graphs in ``_nested``, LLM nodes in ``llm``), the core never
switches on kinds. A node that asks for resources gets its kind's invoker wrapped in a
`ResourceInvoker` (``_resources``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

from ..events import EventBus, StreamingChunkEvent
from ..interrupts import Scope
from ..node import Node
from ..plan import Plan, Step
from ._effects import (
    Awaiting,
    AwaitRows,
    Blocking,
    Body,
    Coro,
    Each,
    Failed,
    Outcome,
    Rows,
    RowsFn,
)
from ._keys import node_fingerprint
from ._resources import ResourceInvoker
from ._work import ColumnCall, Context, FlowFactory, Invoker, ItemCall, Keys, Local, Settings

__all__ = [
    "NodeInvoker",
    "call_function",
    "check_batch_result",
    "invoker_for",
    "join_chunks",
    "plan_engines",
    "plan_invokers",
    "register_invoker",
]

_END = object()
T = TypeVar("T")


def join_chunks(chunks: list[object]) -> object:
    """The value of a streaming node: ``"".join`` for str chunks, a list otherwise."""
    if chunks and all(type(c) is str for c in chunks):
        return "".join(cast("list[str]", chunks))
    return chunks


def check_batch_result(name: str, values: object, n: int) -> list[object]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        size = f" of length {len(values)}" if hasattr(values, "__len__") else ""
        msg = (
            f"batch node {name!r} must return a list with one result per item: "
            f"got {type(values).__name__}{size} for {n} item{'s' if n != 1 else ''}"
        )
        raise TypeError(msg)
    return list(values)


# -- helpers the bodies share ------------------------------------------------------------


def call_function(step: Step, args: Sequence[object]) -> Any:  # the user's value
    func = step.node.func
    if step.positional:
        return func(*args)
    return func(**dict(zip(step.params, args)))


def _scope(
    local: Local | None, step: Step, index: int | None, path: tuple[str, ...], bus: EventBus | None
) -> contextlib.AbstractContextManager[None]:
    if local is None:
        return contextlib.nullcontext()
    scope = Scope(
        node=step.node.name,
        index=index,
        path=path,
        handlers=local.handlers,
        session=local.session,
        bus=bus,
        loop=local.loop,
    )
    return _entered(scope)


@contextlib.contextmanager
def _entered(scope: Scope) -> Iterator[None]:
    token = scope.enter()
    try:
        yield
    finally:
        Scope.leave(token)


def _in_scope(call: ItemCall, fn: Callable[..., T], *args: object) -> T:
    with _scope(call.local, call.step, call.index, call.path, call.bus):
        return fn(*args)


async def _timed(call: ItemCall | ColumnCall, coro: Coro) -> Any:
    timeout = getattr(call.step.node, "timeout", None)
    if timeout is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError as exc:
        name = call.step.node.name
        msg = f"node {name!r} did not finish within its timeout of {timeout:g} s"
        raise TimeoutError(msg) from exc


def _emit(call: ItemCall, chunk: object) -> None:
    if call.bus is not None:
        event = StreamingChunkEvent(
            path=call.path, node=call.step.node.name, chunk=chunk, index=call.index
        )
        call.bus.publish(event)


def _row_call(column: ColumnCall, position: int) -> ItemCall:
    call = ItemCall(
        column.step,
        column.invoker,
        column.rows[position],
        column.indices[position],
        column.path,
        column.bus,
        column.local,
        column.pos,
        column.settings,
    )
    if column.flows is not None:
        call.flow = column.flows[position]
    return call


def _each_rows(column: ColumnCall, invoker: Invoker) -> Body:
    """A column run as one item body per row (kinds with no column shortcut)."""
    outcomes = yield Each([invoker.item(_row_call(column, i)) for i in range(column.n)])
    values: list[Any] = []
    failed: dict[int, BaseException] = {}
    for i, outcome in enumerate(outcomes):
        if type(outcome) is Failed:
            failed[i] = outcome.error
            values.append(None)
        else:
            values.append(outcome)
    return values, failed


# -- the invokers --------------------------------------------------------------------------


class NodeInvoker:
    """The defaults of the `Invoker` protocol: cacheable, no engine, no flow of its own,
    a column run as one item body per row."""

    cacheable = True  # may its results be looked up and stored in the cache?

    def engine_of(self, node: Node[..., Any]) -> str | None:
        """The engine this kind's calls use (None: none), for engine-aware maps."""
        return None

    def fingerprint(self, node: Node[..., Any], settings: Settings) -> str | None:
        """The node's cache identity in this run: its own parts, plus whatever the run
        decides for this kind (an LLM node adds its engine's identity)."""
        return node_fingerprint(node)

    def flow(self, call: ItemCall, ctx: Context, keys: Keys | None) -> FlowFactory | None:
        """The flow a call drives: none for a plain kind."""
        return None

    def flows(
        self, call: ColumnCall, ctx: Context, keys: Callable[[int], Keys | None]
    ) -> list[FlowFactory] | None:
        """Per row, the flow it drives: none for a plain kind."""
        return None

    def item(self, call: ItemCall) -> Body:
        """Call the node for one item; returns its value (raises its error)."""
        raise NotImplementedError

    def column(self, call: ColumnCall) -> Body:
        """Call the node for every row; returns ``(values, failed)``."""
        return _each_rows(call, self)


class PlainInvoker(NodeInvoker):
    """A sync function: a column is one tight loop (the hot path of ``map``)."""

    def item(self, call: ItemCall) -> Body:
        if call.local is None:
            return (yield Blocking(call_function, call.step, call.args))
        return (yield Blocking(_in_scope, call, call_function, call.step, call.args))

    def column(self, call: ColumnCall) -> Body:
        if call.local is not None:  # rows that may wait for an answer: never on the loop
            return (yield Rows(_each_call(call, scoped=True), call.n, inline=False))
        return (yield Rows(_plain_rows(call), call.n, key=call.step))


def _plain_rows(
    call: ColumnCall,
) -> RowsFn:
    """The hot path of ``map``: ``list.extend(map(func, *columns))``, at C speed. After a
    failure ``extend`` keeps what it had, and ``map`` resumes after the failed row."""
    step = call.step
    func = step.node.func
    if not step.positional or not call.args:
        return _each_call(call)

    def run(start: int, stop: int) -> Outcome:
        out: list[Any] = []
        failed: dict[int, BaseException] = {}
        values = map(func, *call.columns(start, stop))
        while True:
            try:
                out.extend(values)
                return out, failed
            except Exception as exc:
                failed[start + len(out)] = exc
                out.append(None)

    return run


def _each_call(call: ColumnCall, scoped: bool = False) -> RowsFn:
    """Rows called one by one: keyword arguments, no arguments at all, or rows that may
    ask questions (``scoped``: each inside its own interrupt scope)."""
    step = call.step

    def run(start: int, stop: int) -> Outcome:
        out: list[Any] = []
        failed: dict[int, BaseException] = {}
        rows = call.rows
        for pos in range(start, stop):
            try:
                if scoped:
                    with _scope(call.local, step, call.indices[pos], call.path, call.bus):
                        out.append(call_function(step, rows[pos]))
                else:
                    out.append(call_function(step, rows[pos]))
            except Exception as exc:
                failed[pos] = exc
                out.append(None)
        return out, failed

    return run


class AsyncInvoker(NodeInvoker):
    """An ``async def`` function, cancelled at its ``timeout``."""

    def item(self, call: ItemCall) -> Body:
        return (yield Awaiting(lambda: self._one(call)))

    async def _one(self, call: ItemCall) -> Any:
        with _scope(call.local, call.step, call.index, call.path, call.bus):
            return await _timed(call, call_function(call.step, call.args))

    def column(self, call: ColumnCall) -> Body:
        if call.local is not None:  # an interrupt scope per row
            return (yield from _each_rows(call, self))

        step, rows = call.step, call.rows
        func = step.node.func
        if step.positional and getattr(step.node, "timeout", None) is None:
            make: Callable[[int], Coro] = lambda i: func(*rows[i])  # noqa: E731
        else:

            def make(i: int) -> Coro:
                return _timed(call, call_function(step, rows[i]))

        return (yield AwaitRows(make, len(rows)))


class GeneratorInvoker(NodeInvoker):
    """A generator function: chunks are pulled one by one and published as they come."""

    def item(self, call: ItemCall) -> Body:
        gen = _in_scope(call, call_function, call.step, call.args)
        chunks = []
        try:
            while (chunk := (yield Blocking(_in_scope, call, next, gen, _END))) is not _END:
                _emit(call, chunk)
                chunks.append(chunk)
        finally:
            gen.close()
        return join_chunks(chunks)


class AsyncGeneratorInvoker(NodeInvoker):
    """An async generator function: chunks are collected in one coroutine."""

    def item(self, call: ItemCall) -> Body:
        return (yield Awaiting(lambda: self._collect(call)))

    async def _collect(self, call: ItemCall) -> Any:
        with _scope(call.local, call.step, call.index, call.path, call.bus):
            agen: AsyncIterator[Any] = call_function(call.step, call.args)
            return await _timed(call, _chunks(call, agen))


async def _chunks(call: ItemCall, agen: AsyncIterator[Any]) -> Any:
    chunks = []
    async for chunk in agen:
        _emit(call, chunk)
        chunks.append(chunk)
    return join_chunks(chunks)


class BatchInvoker(NodeInvoker):
    """A batch node: called once per column with lists; an `Exception` returned in an
    item's place fails that item only."""

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async

    def _call(self, call: ItemCall | ColumnCall, args: list[Any]) -> Any:
        """The effect that calls the node once, inside an interrupt scope (item None)."""
        if self.is_async:
            return Awaiting(lambda: self._await(call, args))
        return Blocking(self._blocking, call, args)

    @staticmethod
    def _blocking(call: ItemCall | ColumnCall, args: list[Any]) -> Any:
        with _scope(call.local, call.step, None, call.path, call.bus):
            return call_function(call.step, args)

    @staticmethod
    async def _await(call: ItemCall | ColumnCall, args: list[Any]) -> Any:
        with _scope(call.local, call.step, None, call.path, call.bus):
            return await _timed(call, call_function(call.step, args))

    def item(self, call: ItemCall) -> Body:
        node = call.step.node
        wrap = node.item_params  # run hands a batch node one-element lists
        args = [[a] if p in wrap else a for p, a in zip(call.step.params, call.args)]
        values = yield self._call(call, args)
        value = check_batch_result(node.name, values, 1)[0]
        if isinstance(value, Exception):
            raise value
        return value

    def column(self, call: ColumnCall) -> Body:
        n = call.n
        try:
            values = yield self._call(call, call.batch_arguments())
            values = check_batch_result(call.step.node.name, values, n)
        except Exception as exc:
            return [None] * n, dict.fromkeys(range(n), exc)
        failed = {i: v for i, v in enumerate(values) if isinstance(v, Exception)}
        return values, failed


_BY_KIND: dict[str, Invoker] = {
    "sync": PlainInvoker(),
    "async": AsyncInvoker(),
    "gen": GeneratorInvoker(),
    "agen": AsyncGeneratorInvoker(),
}
_BATCH = {"sync": BatchInvoker(is_async=False), "async": BatchInvoker(is_async=True)}
_BY_TYPE: dict[type, Callable[[Step], Invoker]] = {}


def register_invoker(node_type: type, factory: Callable[[Step], Invoker]) -> None:
    """Let a node class (an LLM node, say) bring its own invoker."""
    _BY_TYPE[node_type] = factory


def invoker_for(step: Step) -> Invoker:
    """The invoker of a plan step: a registered node class's own, else by kind; for a
    node that asks for resources, that invoker with the resources leased around it."""
    if getattr(step.node, "resources", None):
        return ResourceInvoker(step, _own_invoker)
    return _own_invoker(step)


def _own_invoker(step: Step) -> Invoker:
    node = step.node
    for cls in type(node).__mro__:
        factory = _BY_TYPE.get(cls)
        if factory is not None:
            return factory(step)
    if node.batch:
        return _BATCH[node.kind]
    return _BY_KIND[node.kind]


def plan_engines(plan: Plan) -> frozenset[str]:
    """The engines a plan's steps call (their invokers say), memoised with the plan."""
    memo = plan.memo
    engines: frozenset[str] | None = memo.get("engines")
    if engines is None:
        named = (inv.engine_of(s.node) for s, inv in zip(plan.steps, plan_invokers(plan)))
        engines = memo["engines"] = frozenset(e for e in named if e is not None)
    return engines


def plan_invokers(plan: Plan) -> tuple[Invoker, ...]:
    """The invokers of a plan's steps, chosen once and kept with the plan."""
    memo = plan.memo
    invokers: tuple[Invoker, ...] | None = memo.get("invokers")
    if invokers is None:
        invokers = memo["invokers"] = tuple(invoker_for(s) for s in plan.steps)
    return invokers
