"""What the core asks a runner to do: call one node for one item, or for a column of items.

A `Call` or `ColumnCall` knows how to invoke its node for every kind of function
(plain, ``async def``, generator, async generator, nested graph, batch). Runners only
choose *where* that happens: inline, in a thread pool, as asyncio tasks or on a Dask
worker. Failures are captured per item as `Failed` markers; the core decides what
they mean.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from ..events import EventBus, StreamingChunkEvent
from ..plan import Step

__all__ = ["Call", "ColumnCall", "Failed", "join_chunks"]

Flow = Generator[Any, Any, Any]
Drive = Callable[[Flow], Any]


class Failed:
    """Stands for a raised exception in a column of results."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def join_chunks(chunks: list[Any]) -> Any:
    """The value of a streaming node: ``"".join`` for str chunks, a list otherwise."""
    if chunks and all(type(c) is str for c in chunks):
        return "".join(chunks)
    return chunks


_local = threading.local()


def _run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, reusing one loop per thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_local, "loop", None)
        if loop is None or loop.is_closed():
            loop = _local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coro)
    # called from inside a running loop (a notebook): run it on a helper thread
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="hypernodes-async-node")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


async def _collect_async(agen: Any, emit: Callable[[Any], None] | None) -> list[Any]:
    chunks = []
    async for chunk in agen:
        if emit is not None:
            emit(chunk)
        chunks.append(chunk)
    return chunks


def _call_function(step: Step, args: Sequence[Any]) -> Any:
    func = step.node.func
    if step.positional:
        return func(*args)
    return func(**dict(zip(step.params, args)))


class Call:
    """Run one node for one item (``index`` is None outside ``map``)."""

    __slots__ = (
        "args",
        "bus",
        "error",
        "flow",
        "index",
        "key",
        "path",
        "pos",
        "result",
        "step",
        "t0",
    )

    def __init__(
        self,
        step: Step,
        args: Sequence[Any],
        index: int | None,
        path: tuple[str, ...],
        bus: EventBus | None,
        pos: int = 0,
    ) -> None:
        self.step = step
        self.args = args
        self.index = index
        self.path = path
        self.bus = bus
        self.pos = pos  # the step's position in its plan
        self.flow: Callable[[], Flow] | None = None  # set for a nested graph
        self.key: str | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        # t0 (start time) is set only when someone listens to events

    def _emit(self, chunk: Any) -> None:
        assert self.bus is not None
        self.bus.publish(StreamingChunkEvent(self.path, self.step.node.name, chunk, self.index))

    def run_sync(self, drive: Drive) -> Call:
        """Invoke the node here; the result or the error is kept on the call."""
        step = self.step
        try:
            if step.plain:
                self.result = step.node.func(*self.args)
            else:
                self.result = self._invoke_sync(drive)
        except Exception as exc:
            self.error = exc
        return self

    def _invoke_sync(self, drive: Drive) -> Any:
        node = self.step.node
        kind = node.kind
        if kind == "graph":
            assert self.flow is not None
            return drive(self.flow())
        args: Sequence[Any] = self.args
        if node.batch:
            wrap = node.item_params
            args = [[a] if p in wrap else a for p, a in zip(self.step.params, args)]
        value = _call_function(self.step, args)
        if kind == "async":
            value = _run_coroutine(value)
        elif kind == "gen":
            emit = self._emit if self.bus is not None else None
            chunks = []
            for chunk in value:
                if emit is not None:
                    emit(chunk)
                chunks.append(chunk)
            value = join_chunks(chunks)
        elif kind == "agen":
            emit = self._emit if self.bus is not None else None
            value = join_chunks(_run_coroutine(_collect_async(value, emit)))
        if node.batch:
            value = _single(node.name, value)
        return value


def _single(name: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 1:
        got = (
            f"{type(value).__name__} of length {len(value)}"
            if hasattr(value, "__len__")
            else (type(value).__name__)
        )
        msg = (
            f"batch node {name!r} must return a list with one result per item: got {got} for 1 item"
        )
        raise TypeError(msg)
    return value[0]


class ColumnCall:
    """Run one node for many items of a batch (``rows`` holds each item's arguments).

    A batch node is called once with lists for the varying arguments; any other
    node once per row. ``results`` gets one value or `Failed` per row.
    """

    __slots__ = (
        "bus",
        "constant",
        "indices",
        "keys",
        "n_failed",
        "path",
        "results",
        "rows",
        "step",
        "t0",
    )

    def __init__(
        self,
        step: Step,
        rows: list[tuple[Any, ...]],
        indices: list[int],
        path: tuple[str, ...],
        bus: EventBus | None,
        constant: tuple[bool, ...],
    ) -> None:
        self.step = step
        self.rows = rows
        self.indices = indices
        self.path = path
        self.bus = bus
        self.constant = constant  # per argument: the same for every row (batch nodes get it plain)
        self.keys: list[str | None] = []
        self.results: list[Any] = []
        self.n_failed = 0
        self.t0 = 0.0

    def item_call(self, position: int) -> Call:
        """The single-item call for one row (used for non-plain kinds and by thread pools)."""
        return Call(
            self.step, list(self.rows[position]), self.indices[position], self.path, self.bus
        )

    def split(self, parts: int) -> list[ColumnCall]:
        """This column cut into at most ``parts`` contiguous pieces (for a thread pool)."""
        size = max(1, -(-len(self.rows) // parts))
        return [
            ColumnCall(
                self.step,
                self.rows[s : s + size],
                self.indices[s : s + size],
                self.path,
                self.bus,
                self.constant,
            )
            for s in range(0, len(self.rows), size)
        ]

    def run_sync(self, drive: Drive) -> ColumnCall:
        node = self.step.node
        if node.batch:
            self.results = self._run_batch()
        elif node.kind == "sync":
            self.results = self._run_plain(self.rows)
        else:
            self.results = [self._one(i, drive) for i in range(len(self.rows))]
        if node.batch or node.kind != "sync":
            self.n_failed = sum(type(r) is Failed for r in self.results)
        return self

    def _one(self, position: int, drive: Drive) -> Any:
        call = self.item_call(position).run_sync(drive)
        return Failed(call.error) if call.error is not None else call.result

    def _run_plain(self, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Call the function per row; an exception becomes a `Failed` in its place."""
        step = self.step
        func = step.node.func
        out: list[Any] = []
        append = out.append
        it = iter(rows)
        n_failed = 0
        while True:  # the try sits outside the hot loop; after a failure the loop resumes
            try:
                if step.positional:
                    for args in it:
                        append(func(*args))
                else:
                    params = step.params
                    for args in it:
                        append(func(**dict(zip(params, args))))
                break
            except Exception as exc:
                append(Failed(exc))
                n_failed += 1
        self.n_failed = n_failed
        return out

    def batch_arguments(self) -> list[Any]:
        """Lists for the varying arguments, plain values for the constant ones."""
        if not self.rows:
            return []
        columns = list(zip(*self.rows))
        return [col[0] if const else list(col) for col, const in zip(columns, self.constant)]

    def _run_batch(self) -> list[Any]:
        n = len(self.rows)
        try:
            values = _call_function(self.step, self.batch_arguments())
            if self.step.node.kind == "async":
                values = _run_coroutine(values)
            return check_batch_result(self.step.node.name, values, n)
        except Exception as exc:
            failed = Failed(exc)
            return [failed] * n


def check_batch_result(name: str, values: Any, n: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{type(values).__name__}" + (
            f" of length {len(values)}" if hasattr(values, "__len__") else ""
        )
        msg = (
            f"batch node {name!r} must return a list with one result per item: "
            f"got {got} for {n} items"
        )
        raise TypeError(msg)
    return list(values)
