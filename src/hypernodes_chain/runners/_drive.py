"""The drivers: the only code that executes work.

A flow yields lists of work (`ItemCall`, `ColumnCall`, `BatchTask`) and receives back the
pieces that finished; a flow of a ``map`` also yields `BatchRows` for the caller. A call is
executed by stepping its invoker's body (``_invoke``) and resolving the effects it yields:

- `SyncDriver` resolves them in this thread (``Runner``), or with a thread pool
  (``Runner(max_workers=N)``: rows cut into pieces, independent calls side by side);
- `AsyncDriver` resolves them on the event loop (``AsyncRunner``): coroutines awaited,
  blocking code in worker threads, every call holding a slot of one `Limiter`.

A `BatchTask` is run in place by driving `batch_flow` with the same driver; a remote driver
(Dask) would ship it instead. Both drivers send back every finished piece as soon as it is
done, one or several at a time, so a flow must not depend on the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from .._aio import run_coroutine
from ._effects import (
    Awaiting,
    AwaitRows,
    Blocking,
    Body,
    Each,
    Effect,
    Either,
    Failed,
    Nested,
    Outcome,
    Rows,
    RowsFn,
    await_rows,
)
from ._flows import batch_flow
from ._work import BatchRows, BatchTask, ColumnCall, Flow, ItemCall, MapFlow, Work

__all__ = ["AsyncDriver", "Limiter", "Shipper", "SyncDriver"]

_perf = time.perf_counter
R = TypeVar("R")
T = TypeVar("T")
Call = ItemCall | ColumnCall


def _body(work: Call) -> Body:
    match work:
        case ItemCall():
            return work.invoker.item(work)
        case ColumnCall():
            return work.invoker.column(work)


def _settle(work: Call, value: Any) -> None:
    """Store what a body returned on its call."""
    match work:
        case ItemCall():
            work.result = value
        case ColumnCall():
            work.results, work.failed = value


def _broke(work: Call, error: BaseException) -> None:
    """Store what a body raised on its call: for a column, every row fails with it."""
    match work:
        case ItemCall():
            work.error = error
        case ColumnCall():
            work.results, work.failed = [None] * work.n, dict.fromkeys(range(work.n), error)


def _merge(parts: list[Outcome]) -> Outcome:
    """Pieces of rows, in order, back into one outcome (their positions are absolute)."""
    values: list[Any] = []
    failed: dict[int, BaseException] = {}
    for part, bad in parts:
        values += part
        failed.update(bad)
    return values, failed


def _timed(fn: RowsFn, start: int, stop: int) -> tuple[Outcome, float]:
    """``fn(start, stop)`` and the seconds it took, measured where it ran."""
    t0 = _perf()
    out = fn(start, stop)
    return out, _perf() - t0


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    size = max(1, -(-n // max(1, parts)))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


# -- sync --------------------------------------------------------------------------------


class Shipper(Protocol):
    """Work sent elsewhere (Dask tasks, Daft rows) for one flow, by a remote driver."""

    @property
    def pending(self) -> bool:
        """Whether pieces are out."""
        ...

    def ships(self, piece: Work) -> bool:
        """Whether ``piece`` goes elsewhere (else it runs here)."""
        ...

    def send(self, piece: Work) -> None: ...

    def receive(self) -> list[Work]:
        """At least one finished piece (waits for one)."""
        ...

    def close(self) -> None:
        """Give up what is still out."""
        ...


class SyncDriver:
    """Runs work in this thread, or with a pool of ``workers`` threads."""

    def __init__(self, pool: ThreadPoolExecutor | None = None, workers: int = 1) -> None:
        self.pool = pool
        self.workers = workers

    def drive(self, flow: Flow[R] | MapFlow[R]) -> R:
        """Drive ``flow`` to its end and return its value (a map's rows are dropped)."""
        batches = self.batches(flow)
        while True:
            try:
                next(batches)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]

    def batches(self, flow: Flow[R] | MapFlow[R]) -> Generator[list[object], None, R]:
        """Drive ``flow``, yielding the rows of each finished batch; returns its value."""
        shipper = self.shipper()
        sent: list[Work] | None = None
        try:
            while True:
                try:
                    step = flow.send(sent)  # type: ignore[arg-type]
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                match step:
                    case BatchRows():
                        sent = None
                        yield step.rows
                    case _ if shipper is None:
                        sent = self.execute(step)
                    case _:
                        sent = self._exchange(step, shipper)
        finally:
            try:
                if shipper is not None:
                    shipper.close()
            finally:
                flow.close()

    def shipper(self) -> Shipper | None:
        """Where this driver sends work to run elsewhere, for one flow (None: nowhere)."""
        return None

    def _exchange(self, work: Sequence[Work], shipper: Shipper) -> list[Work]:
        """Ship what the shipper takes, run the rest here; back: what finished."""
        here = []
        for piece in work:
            if shipper.ships(piece):
                shipper.send(piece)
            else:
                self.run(piece)
                here.append(piece)
        if here:
            return here
        if not shipper.pending:
            msg = "the flow waits for work it never handed out"
            raise RuntimeError(msg)
        return shipper.receive()

    def execute(self, work: Sequence[Work]) -> list[Work]:
        """Run every piece of work; all of them come back finished."""
        if self.pool is None or (len(work) == 1 and not isinstance(work[0], ColumnCall)):
            for piece in work:
                self.run(piece)
            return list(work)
        return self._pooled(work)

    def run(self, piece: Work) -> None:
        match piece:
            case BatchTask():
                try:
                    piece.outcome = self.drive(batch_flow(piece))
                except Exception as exc:
                    piece.error = exc
            case ItemCall() | ColumnCall():
                try:
                    _settle(piece, self._step(_body(piece)))
                except Exception as exc:
                    _broke(piece, exc)

    def _step(self, body: Body, first: Effect | None = None, started: bool = False) -> Any:
        """Run a body to its end, resolving each effect here."""
        try:
            effect = first if started else next(body)
            while True:
                effect = body.send(self._resolve(effect))
        except StopIteration as stop:
            return stop.value
        finally:
            body.close()

    def _resolve(self, effect: Effect | None) -> Any:
        match effect:
            case Rows() if self.pool is not None and effect.n > 1 and self.workers > 1:
                return self._rows_pooled(effect)
            case Rows():
                return effect.fn(0, effect.n)
            case Blocking() | Either():
                return effect.fn(*effect.args)
            case Awaiting():
                return run_coroutine(effect.make())
            case AwaitRows():
                return run_coroutine(await_rows(effect.make, effect.n, 1))
            case Nested():
                return self.drive(effect.flow())
            case Each():
                return [self._outcome(body) for body in effect.bodies]
        msg = f"unknown effect {effect!r}"
        raise TypeError(msg)

    def _outcome(self, body: Body) -> object:
        try:
            return self._step(body)
        except Exception as exc:
            return Failed(exc)

    def _rows_pooled(self, effect: Rows) -> Outcome:
        assert self.pool is not None
        ranges = _ranges(effect.n, self.workers)
        futures = [self.pool.submit(effect.fn, a, b) for a, b in ranges]
        return _merge([f.result() for f in futures])

    def _pooled(self, work: Sequence[Work]) -> list[Work]:
        """Independent pieces side by side: rows cut across the pool, other calls each in
        a pool thread, flows (batch tasks, nested graphs) here (their calls use the pool).
        Only this thread submits to the pool, so no pool thread ever waits on the pool."""
        assert self.pool is not None
        here: list[Work] = []
        split: list[tuple[ColumnCall, Body, list[Future[Outcome]]]] = []
        futures: list[Future[None]] = []
        for piece in work:
            match piece:
                case BatchTask():
                    here.append(piece)
                case _ if piece.carries_flow:
                    here.append(piece)
                case ColumnCall():
                    body = _body(piece)
                    first = next(body, None)
                    if isinstance(first, Rows):
                        ranges = _ranges(first.n, self.workers)
                        parts = [self.pool.submit(first.fn, a, b) for a, b in ranges]
                        split.append((piece, body, parts))
                    else:
                        futures.append(self.pool.submit(self._finish, piece, body, first))
                case ItemCall():
                    futures.append(self.pool.submit(self.run, piece))
        for piece in here:
            self.run(piece)
        for column, body, parts in split:
            self._finish(column, body, None, sent=_merge([f.result() for f in parts]))
        wait(futures)
        for f in futures:
            f.result()
        return list(work)

    def _finish(
        self, piece: ColumnCall, body: Body, first: Effect | None, sent: Outcome | None = None
    ) -> None:
        try:
            if sent is not None:
                first = body.send(sent)
            inline = SyncDriver()  # inside a pool thread: no nested use of the pool
            _settle(piece, inline._step(body, first, started=True))
        except StopIteration as stop:
            _settle(piece, stop.value)
        except Exception as exc:
            _broke(piece, exc)


# -- async -------------------------------------------------------------------------------


class Limiter(asyncio.Semaphore):
    """The semaphore that caps calls in flight, knowing its own size."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class AsyncDriver:
    """Runs work as asyncio tasks; whichever pieces finish first are sent back first."""

    threads = 8  # a slow plain column is cut into this many pieces for worker threads
    probe = 4  # rows of a plain column timed (in a thread) to tell quick from slow
    inline_budget = 0.005  # seconds of quick rows the loop may spend on a column at once

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._quick: dict[object, bool] = {}  # per node: may its columns run on the loop?

    async def drive(
        self, flow: Flow[R] | MapFlow[R], on_rows: Callable[[list[object]], None] | None = None
    ) -> R:
        """Drive ``flow`` to its end; the rows of finished batches go to ``on_rows``."""
        in_flight: dict[asyncio.Future[None], Work] = {}
        sent: list[Work] | None = None
        try:
            while True:
                try:
                    step = flow.send(sent)  # type: ignore[arg-type]
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                if isinstance(step, BatchRows):
                    sent = None
                    if on_rows is not None:
                        on_rows(step.rows)
                    continue
                for piece in step:
                    in_flight[asyncio.ensure_future(self.run(piece))] = piece
                if not in_flight:
                    msg = "internal error: the flow waits for work but none is in flight"
                    raise RuntimeError(msg)
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                sent = [in_flight.pop(task) for task in done]
                for task in done:
                    task.result()  # re-raise a cancellation that hit the work itself
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*in_flight, return_exceptions=True)
            flow.close()

    async def run(self, piece: Work) -> None:
        match piece:
            case BatchTask():
                try:
                    piece.outcome = await self.drive(batch_flow(piece))
                except Exception as exc:
                    piece.error = exc
            case ItemCall() | ColumnCall():
                try:
                    _settle(piece, await self._step(_body(piece)))
                except Exception as exc:
                    _broke(piece, exc)

    async def _step(self, body: Body) -> Any:
        try:
            effect = next(body)
            while True:
                effect = body.send(await self._resolve(effect))
        except StopIteration as stop:
            return stop.value
        finally:
            body.close()

    async def _resolve(self, effect: Effect) -> Any:
        limiter = self.limiter
        match effect:
            case Rows():
                return await self._rows(effect)
            case Blocking():
                return await self._thread(effect.fn, *effect.args)
            case Awaiting():
                async with limiter:
                    return await effect.make()
            case Either():  # its own concurrency is the engine's to bound
                return await effect.make()
            case AwaitRows():
                return await await_rows(effect.make, effect.n, limiter.size, lambda: limiter)
            case Nested():
                return await self.drive(effect.flow())  # inner calls take their own slots
            case Each():
                return await asyncio.gather(*(self._outcome(body) for body in effect.bodies))
        msg = f"unknown effect {effect!r}"
        raise TypeError(msg)

    async def _rows(self, effect: Rows) -> Outcome:
        """A plain column. The first column of a node: a few rows in a worker thread, timed
        there; quick rows (cheap code, no I/O) finish on the loop, saving thread hops, slow
        ones go to worker threads in pieces, and the driver remembers which the node is.
        Unknown code never blocks the loop; a quick node that turns slow goes to threads."""
        n, start, parts = effect.n, 0, list[Outcome]()
        quick = self._quick.get(effect.key) if effect.key is not None else None
        if effect.inline and quick:
            t0 = _perf()
            out = effect.fn(0, n)
            if _perf() - t0 > 2 * self.inline_budget:
                self._quick[effect.key] = False
            return out
        if effect.inline and quick is None:
            start = min(n, self.probe)
            part, took = await self._thread(_timed, effect.fn, 0, start)
            parts.append(part)
            fast = took / max(1, start) * max(1, n - start) <= self.inline_budget
            if effect.key is not None:
                self._quick[effect.key] = fast
            if fast:
                parts.append(effect.fn(start, n))
                return _merge(parts)
        ranges = [(a + start, b + start) for a, b in _ranges(n - start, self.threads)]
        rest = await asyncio.gather(*(self._thread(effect.fn, a, b) for a, b in ranges))
        return _merge([*parts, *rest])

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        async with self.limiter:
            return await asyncio.to_thread(fn, *args)

    async def _outcome(self, body: Body) -> object:
        try:
            return await self._step(body)
        except Exception as exc:
            return Failed(exc)


def iterate(batches: Generator[list[object], None, object]) -> Iterator[Any]:
    """The rows of a sync driver's batches, one by one."""
    for rows in batches:
        yield from rows
