"""How each kind of node is called: one invoker per kind, ONE body per call shape.

An invoker's body is a generator that yields *effects* and receives their results, so the
same body runs under every driver (the httpx ``auth_flow`` idea one level down):

- `Blocking(fn, *args)`: call ``fn``; the sync driver calls it here, the async driver in
  a worker thread;
- `Awaiting(make)`: await the coroutine ``make()``; the sync driver runs it on this
  thread's loop, the async driver awaits it (holding a concurrency slot);
- `Rows(fn, n)`: ``fn(start, stop) -> (values, failed)`` over rows; a driver may cut the
  range into pieces for threads (the async driver runs quick rows on the loop itself);
- `AwaitRows(make, n)`: ``make(i)`` is row i's coroutine; run with as many workers as the
  driver allows, each holding a slot;
- `Either(fn, args, make)`: ``fn(*args)`` under the sync driver, ``await make()`` under the
  async one (an engine's ``generate`` and ``agenerate``);
- `Nested(flow)`: drive the flow ``flow()`` (a nested graph) with this driver;
- `Each(bodies)`: run several bodies (one per row); each outcome comes back as its value
  or a `Failed`.

An item body returns the node's value (or raises); a column body returns ``(values,
failed)``, ``failed`` mapping row positions to exceptions: the single place where a
column's failures are counted. Invokers are chosen once per plan step (`invoker_for`);
a new node kind registers its own (`register_invoker`), the core never switches on kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..events import StreamingChunkEvent
from ..interrupts import Scope
from ..plan import Plan, Step
from ._keys import node_fingerprint
from ._work import ItemCall

if TYPE_CHECKING:
    from ._work import ColumnCall, Local, Settings

__all__ = [
    "AwaitRows",
    "Awaiting",
    "Blocking",
    "Each",
    "Either",
    "Failed",
    "Invoker",
    "Nested",
    "Rows",
    "check_batch_result",
    "invoker_for",
    "join_chunks",
    "plan_invokers",
    "register_invoker",
]

Body = Generator[Any, Any, Any]
_END = object()


class Failed:
    """Stands for a raised exception among the outcomes of `Each`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Blocking:
    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args


class Awaiting:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self.make = make


class Either:
    """Call ``fn(*args)`` under the sync driver, await ``make()`` under the async one: for
    work with a native twin of each kind (an engine's ``generate`` / ``agenerate``)."""

    __slots__ = ("args", "fn", "make")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...],
        make: Callable[[], Coroutine[Any, Any, Any]],
    ) -> None:  # fmt: skip
        self.fn, self.args, self.make = fn, args, make


class Rows:
    __slots__ = ("fn", "inline", "key", "n")

    def __init__(
        self,
        fn: Callable[[int, int], tuple[list[Any], dict[int, BaseException]]],
        n: int,
        inline: bool = True,
        key: object = None,
    ) -> None:
        self.fn, self.n = fn, n
        self.inline = inline  # may run on an event loop's own thread (no interrupt waits)
        self.key = key  # the same for every column of one node: a driver may learn its speed


class AwaitRows:
    __slots__ = ("make", "n")

    def __init__(self, make: Callable[[int], Coroutine[Any, Any, Any]], n: int) -> None:
        self.make, self.n = make, n


class Nested:
    __slots__ = ("flow",)

    def __init__(self, flow: Callable[[], Any]) -> None:
        self.flow = flow


class Each:
    __slots__ = ("bodies",)

    def __init__(self, bodies: list[Body]) -> None:
        self.bodies = bodies


async def await_rows(
    make: Callable[[int], Coroutine[Any, Any, Any]],
    n: int,
    workers: int,
    slot: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
) -> tuple[list[Any], dict[int, BaseException]]:
    """Row coroutines with at most ``workers`` in flight: the body of `AwaitRows`, shared
    by both drivers (the sync one passes ``workers=1``). Each worker holds one ``slot``."""
    values: list[Any] = [None] * n
    failed: dict[int, BaseException] = {}
    todo = iter(range(n))

    async def worker() -> None:
        async with slot() if slot is not None else contextlib.nullcontext():
            for i in todo:
                try:
                    values[i] = await make(i)
                except Exception as exc:
                    failed[i] = exc

    count = max(1, min(n, workers))
    if count == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(count)))
    return values, failed


def join_chunks(chunks: list[Any]) -> Any:
    """The value of a streaming node: ``"".join`` for str chunks, a list otherwise."""
    if chunks and all(type(c) is str for c in chunks):
        return "".join(chunks)
    return chunks


def check_batch_result(name: str, values: Any, n: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        size = f" of length {len(values)}" if hasattr(values, "__len__") else ""
        msg = (
            f"batch node {name!r} must return a list with one result per item: "
            f"got {type(values).__name__}{size} for {n} item{'s' if n != 1 else ''}"
        )
        raise TypeError(msg)
    return list(values)


# -- helpers the bodies share ------------------------------------------------------------


def call_function(step: Step, args: Sequence[Any]) -> Any:
    func = step.node.func
    if step.positional:
        return func(*args)
    return func(**dict(zip(step.params, args)))


def _scope(
    local: Local | None, step: Step, index: int | None, path: tuple[str, ...], bus: Any
) -> contextlib.AbstractContextManager[Any]:
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


def _in_scope(call: ItemCall, fn: Callable[..., Any], *args: Any) -> Any:
    with _scope(call.local, call.step, call.index, call.path, call.bus):
        return fn(*args)


async def _timed(call: ItemCall | ColumnCall, coro: Coroutine[Any, Any, Any]) -> Any:
    timeout = getattr(call.step.node, "timeout", None)
    if timeout is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError as exc:
        name = call.step.node.name
        msg = f"node {name!r} did not finish within its timeout of {timeout:g} s"
        raise TimeoutError(msg) from exc


def _emit(call: ItemCall, chunk: Any) -> None:
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


class Invoker:
    """How one node kind is called. ``nested``: its calls carry a flow to drive."""

    nested = False
    cacheable = True  # may its results be looked up and stored in the cache?

    def engine_of(self, node: Any) -> str | None:
        """The engine this kind's calls use (None: none), for engine-aware maps."""
        return None

    def fingerprint(self, node: Any, settings: Settings) -> str | None:
        """The node's cache identity in this run: its own parts, plus whatever the run
        decides for this kind (an LLM node adds its engine's identity)."""
        return node_fingerprint(node)

    def item(self, call: ItemCall) -> Body:
        """Call the node for one item; returns its value (raises its error)."""
        raise NotImplementedError

    def column(self, call: ColumnCall) -> Body:
        """Call the node for every row; returns ``(values, failed)``."""
        return _each_rows(call, self)


class PlainInvoker(Invoker):
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
) -> Callable[[int, int], tuple[list[Any], dict[int, BaseException]]]:
    """The hot path of ``map``: ``list.extend(map(func, *columns))``, at C speed. After a
    failure ``extend`` keeps what it had, and ``map`` resumes after the failed row."""
    step = call.step
    func = step.node.func
    if not step.positional or not call.args:
        return _each_call(call)

    def run(start: int, stop: int) -> tuple[list[Any], dict[int, BaseException]]:
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


def _each_call(
    call: ColumnCall, scoped: bool = False
) -> Callable[[int, int], tuple[list[Any], dict[int, BaseException]]]:
    """Rows called one by one: keyword arguments, no arguments at all, or rows that may
    ask questions (``scoped``: each inside its own interrupt scope)."""
    step = call.step

    def run(start: int, stop: int) -> tuple[list[Any], dict[int, BaseException]]:
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


class AsyncInvoker(Invoker):
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
            make: Callable[[int], Coroutine[Any, Any, Any]] = lambda i: func(*rows[i])  # noqa: E731
        else:

            def make(i: int) -> Coroutine[Any, Any, Any]:
                return _timed(call, call_function(step, rows[i]))

        return (yield AwaitRows(make, len(rows)))


class GeneratorInvoker(Invoker):
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


class AsyncGeneratorInvoker(Invoker):
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


class BatchInvoker(Invoker):
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


class GraphInvoker(Invoker):
    """A nested graph: its flow is driven by the same driver (its nodes cache themselves)."""

    nested = True
    cacheable = False

    def item(self, call: ItemCall) -> Body:
        return (yield Nested(call.flow))


_BY_KIND: dict[str, Invoker] = {
    "sync": PlainInvoker(),
    "async": AsyncInvoker(),
    "gen": GeneratorInvoker(),
    "agen": AsyncGeneratorInvoker(),
    "graph": GraphInvoker(),
}
_BATCH = {"sync": BatchInvoker(is_async=False), "async": BatchInvoker(is_async=True)}
_BY_TYPE: dict[type, Callable[[Step], Invoker]] = {}


def register_invoker(node_type: type, factory: Callable[[Step], Invoker]) -> None:
    """Let a node class (an LLM node, say) bring its own invoker."""
    _BY_TYPE[node_type] = factory


def invoker_for(step: Step) -> Invoker:
    """The invoker of a plan step: a registered node class's own, else by kind."""
    node = step.node
    for cls in type(node).__mro__:
        factory = _BY_TYPE.get(cls)
        if factory is not None:
            return factory(step)
    if node.batch:
        return _BATCH[node.kind]
    return _BY_KIND[node.kind]


def plan_invokers(plan: Plan) -> tuple[Invoker, ...]:
    """The invokers of a plan's steps, chosen once and kept with the plan."""
    memo = plan.memo
    invokers: tuple[Invoker, ...] | None = memo.get("invokers")
    if invokers is None:
        invokers = memo["invokers"] = tuple(invoker_for(s) for s in plan.steps)
    return invokers
