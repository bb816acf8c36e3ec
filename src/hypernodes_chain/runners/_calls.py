"""What the core asks a runner to do: call one node for one item, or for a column of items.

A `Call` or `ColumnCall` knows how to invoke its node for every kind of function
(plain, ``async def``, generator, async generator, nested graph, batch), in two
twins: ``run_sync`` (inline) and ``run_async`` (sync code goes to a worker thread,
coroutines are awaited). Runners only choose *where* that happens. Failures are
captured per item as `Failed` markers; the core decides what they mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from typing import Any

from ..events import EventBus, StreamingChunkEvent
from ..interrupts import Scope
from ..plan import Step

__all__ = ["Call", "ColumnCall", "Failed", "Limiter", "join_chunks", "run_coroutine"]

Flow = Generator[Any, Any, Any]
Drive = Callable[[Flow], Any]
ADrive = Callable[[Flow], Awaitable[Any]]
_END = object()


class Limiter(asyncio.Semaphore):
    """The semaphore that caps calls in flight, knowing its own size."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


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


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, reusing one loop per thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_local, "loop", None)
        if loop is None or loop.is_closed():
            loop = _local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coro)
    # called from inside a running loop (a notebook): run it on a helper thread
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(coro)))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, name="hypernodes-async-node")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _call_function(step: Step, args: Sequence[Any]) -> Any:
    func = step.node.func
    if step.positional:
        return func(*args)
    return func(**dict(zip(step.params, args)))


class _Interactive:
    """Shared by both call types: the interrupt scope around a node's code."""

    __slots__ = ()
    ctx: Any
    step: Step
    path: tuple[str, ...]
    bus: EventBus | None

    def scope(self, index: int | None) -> contextlib.AbstractContextManager[None]:
        if self.ctx is None:
            return contextlib.nullcontext()
        return _entered(
            Scope(
                node=self.step.node.name,
                index=index,
                path=self.path,
                handlers=self.ctx.handlers,
                session=self.ctx.session,
                bus=self.bus,
                loop=self.ctx.loop,
            )
        )


@contextlib.contextmanager
def _entered(scope: Scope) -> Iterator[None]:
    token = scope.enter()
    try:
        yield
    finally:
        Scope.leave(token)


class Call(_Interactive):
    """Run one node for one item (``index`` is None outside ``map``)."""

    __slots__ = (
        "args", "bus", "ctx", "error", "flow", "index", "key", "path", "pos", "result", "step",
        "t0",
    )  # fmt: skip
    t0: float  # start time, set only when someone listens to events

    def __init__(
        self,
        step: Step,
        args: Sequence[Any],
        index: int | None,
        path: tuple[str, ...],
        bus: EventBus | None,
        pos: int = 0,
        ctx: Any = None,
    ) -> None:
        self.step = step
        self.args = args
        self.index = index
        self.path = path
        self.bus = bus
        self.pos = pos  # the step's position in its plan
        self.ctx = ctx  # set only when interrupts can be answered (handlers or iter)
        self.flow: Callable[[], Flow] | None = None  # set for a nested graph
        self.key: str | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        # t0 (start time) is set only when someone listens to events

    def _emit(self, chunk: Any) -> None:
        assert self.bus is not None
        self.bus.publish(StreamingChunkEvent(self.path, self.step.node.name, chunk, self.index))

    def _arguments(self) -> Sequence[Any]:
        node = self.step.node
        if not node.batch:
            return self.args
        wrap = node.item_params  # run hands a batch node one-element lists
        return [[a] if p in wrap else a for p, a in zip(self.step.params, self.args)]

    def _finish(self, value: Any) -> Any:
        if self.step.node.batch:
            return check_batch_result(self.step.node.name, value, 1)[0]
        return value

    # -- sync ------------------------------------------------------------------
    def run_sync(self, drive: Drive) -> Call:
        """Invoke the node here; the result or the error is kept on the call."""
        step = self.step
        try:
            if step.plain and self.ctx is None:
                self.result = step.node.func(*self.args)
            elif step.node.kind == "graph":
                assert self.flow is not None
                self.result = drive(self.flow())
            else:
                with self.scope(self.index):
                    self.result = self._invoke_sync()
        except Exception as exc:
            self.error = exc
        return self

    def _invoke_sync(self) -> Any:
        kind = self.step.node.kind
        value = _call_function(self.step, self._arguments())
        if kind == "async":
            value = run_coroutine(value)
        elif kind == "gen":
            value = join_chunks(list(self._stream(value)))
        elif kind == "agen":
            value = join_chunks(run_coroutine(self._acollect(value)))
        return self._finish(value)

    def _stream(self, gen: Iterator[Any]) -> Iterator[Any]:
        for chunk in gen:
            if self.bus is not None:
                self._emit(chunk)
            yield chunk

    async def _acollect(self, agen: AsyncIterator[Any]) -> list[Any]:
        chunks = []
        async for chunk in agen:
            if self.bus is not None:
                self._emit(chunk)
            chunks.append(chunk)
        return chunks

    # -- async -----------------------------------------------------------------
    async def run_async(self, adrive: ADrive, limiter: Limiter) -> Call:
        """Invoke the node from the event loop: coroutines awaited, sync code in a thread."""
        try:
            if self.step.node.kind == "graph":
                assert self.flow is not None
                self.result = await adrive(self.flow())  # inner calls take their own slots
            else:
                async with limiter:
                    with self.scope(self.index):
                        self.result = await self._invoke_async()
        except Exception as exc:
            self.error = exc
        return self

    async def _invoke_async(self) -> Any:
        kind = self.step.node.kind
        if kind == "sync":
            value = await asyncio.to_thread(_call_function, self.step, self._arguments())
        elif kind == "async":
            value = await _call_function(self.step, self._arguments())
        elif kind == "agen":
            value = join_chunks(await self._acollect(_call_function(self.step, self.args)))
        else:  # a sync generator: each chunk is pulled in a thread, emitted as it comes
            gen = await asyncio.to_thread(_call_function, self.step, self.args)
            chunks = []
            try:
                while (chunk := await asyncio.to_thread(next, gen, _END)) is not _END:
                    if self.bus is not None:
                        self._emit(chunk)
                    chunks.append(chunk)
            finally:
                gen.close()
            value = join_chunks(chunks)
        return self._finish(value)


class ColumnCall(_Interactive):
    """Run one node for many items of a batch (``rows`` holds each item's arguments).

    A batch node is called once with lists for the varying arguments; any other
    node once per row. ``results`` gets one value or `Failed` per row.
    """

    __slots__ = (
        "bus", "constant", "ctx", "indices", "n_failed", "path", "results", "rows", "step", "t0",
    )  # fmt: skip

    def __init__(
        self,
        step: Step,
        rows: list[tuple[Any, ...]],
        indices: list[int],
        path: tuple[str, ...],
        bus: EventBus | None,
        constant: tuple[bool, ...],
        ctx: Any = None,
    ) -> None:
        self.step = step
        self.rows = rows
        self.indices = indices
        self.path = path
        self.bus = bus
        self.constant = constant  # per argument: the same for every row (batch nodes get it plain)
        self.ctx = ctx
        self.results: list[Any] = []
        self.n_failed = 0
        self.t0 = 0.0

    def item_call(self, position: int) -> Call:
        """The single-item call for one row."""
        return Call(
            self.step, self.rows[position], self.indices[position], self.path, self.bus,
            ctx=self.ctx,
        )  # fmt: skip

    def split(self, parts: int) -> list[ColumnCall]:
        """This column cut into at most ``parts`` contiguous pieces (for worker threads)."""
        size = max(1, -(-len(self.rows) // parts))
        return [
            ColumnCall(
                self.step,
                self.rows[s : s + size],
                self.indices[s : s + size],
                self.path,
                self.bus,
                self.constant,
                self.ctx,
            )
            for s in range(0, len(self.rows), size)
        ]

    def merge(self, parts: Sequence[ColumnCall]) -> None:
        self.results = [r for part in parts for r in part.results]
        self.n_failed = sum(part.n_failed for part in parts)

    # -- sync ------------------------------------------------------------------
    def run_sync(self, drive: Drive) -> ColumnCall:
        node = self.step.node
        if node.batch:
            self.results = self._run_batch()
        elif node.kind == "sync":
            self.results = self._run_plain(self.rows)
        elif node.kind == "async" and self.ctx is None:
            # one trip into an event loop for the column, items awaited one after another
            self.results = run_coroutine(self._await_rows(Limiter(1)))
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
        if self.ctx is not None:  # interrupts need a scope per item
            return [self._one(i, lambda flow: None) for i in range(len(rows))]
        step = self.step
        func = step.node.func
        out: list[Any] = []
        append = out.append
        it = iter(rows)
        n_failed = 0
        while True:  # the try sits outside the hot loop; after a failure the loop resumes
            try:
                if step.positional and len(step.params) == 1:
                    for (arg,) in it:  # unpacking here beats func(*args) by ~20%
                        append(func(arg))
                elif step.positional:
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
            with self.scope(None):
                values = _call_function(self.step, self.batch_arguments())
                if self.step.node.kind == "async":
                    values = run_coroutine(values)
            return check_batch_result(self.step.node.name, values, n)
        except Exception as exc:
            return [Failed(exc)] * n

    # -- async -----------------------------------------------------------------
    async def run_async(self, adrive: ADrive, limiter: Limiter, threads: int = 8) -> ColumnCall:
        """Items run concurrently, each holding a ``limiter`` slot while it runs."""
        node = self.step.node
        if node.batch:
            async with limiter:
                self.results = await self._run_batch_async()
            self.n_failed = sum(type(r) is Failed for r in self.results)
        elif node.kind == "async" and self.ctx is None:
            self.results = await self._await_rows(limiter)
            self.n_failed = sum(type(r) is Failed for r in self.results)
        elif node.kind == "sync" and self.ctx is None:
            parts = self.split(threads)
            await asyncio.gather(*(self._run_part(part, limiter) for part in parts))
            self.merge(parts)
        else:
            calls = [self.item_call(i) for i in range(len(self.rows))]
            await asyncio.gather(*(c.run_async(adrive, limiter) for c in calls))
            self.results = [Failed(c.error) if c.error is not None else c.result for c in calls]
            self.n_failed = sum(c.error is not None for c in calls)
        return self

    async def _await_rows(self, limiter: Limiter) -> list[Any]:
        """Await an async function over every row with at most ``limiter.size`` workers.

        A worker holds one limiter slot and takes rows from a shared iterator: far fewer
        tasks than one per item, and the cap on calls in flight holds all the same.
        """
        step = self.step
        rows = self.rows
        results: list[Any] = [None] * len(rows)
        todo = iter(range(len(rows)))

        async def worker() -> None:
            async with limiter:
                for i in todo:
                    try:
                        results[i] = await _call_function(step, rows[i])
                    except Exception as exc:
                        results[i] = Failed(exc)

        n_workers = min(len(rows), limiter.size)
        if n_workers == 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(n_workers)))
        return results

    @staticmethod
    async def _run_part(part: ColumnCall, limiter: asyncio.Semaphore) -> None:
        async with limiter:
            await asyncio.to_thread(part.run_sync, lambda flow: None)

    async def _run_batch_async(self) -> list[Any]:
        n = len(self.rows)
        try:
            with self.scope(None):
                if self.step.node.kind == "async":
                    values = await _call_function(self.step, self.batch_arguments())
                else:
                    values = await asyncio.to_thread(
                        _call_function, self.step, self.batch_arguments()
                    )
            return check_batch_result(self.step.node.name, values, n)
        except Exception as exc:
            return [Failed(exc)] * n


def check_batch_result(name: str, values: Any, n: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        size = f" of length {len(values)}" if hasattr(values, "__len__") else ""
        msg = (
            f"batch node {name!r} must return a list with one result per item: "
            f"got {type(values).__name__}{size} for {n} item{'s' if n != 1 else ''}"
        )
        raise TypeError(msg)
    return list(values)
