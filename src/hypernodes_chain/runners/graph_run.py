"""`GraphRun`: the session behind ``AsyncRunner.iter`` (events out, answers in)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..events import Event, InterruptEvent
from ..exceptions import InterruptError

__all__ = ["GraphRun"]

_NOT_YET = object()


class GraphRun:
    """An async context manager and async iterator over the events of one run or map.

    Leaving the ``async with`` block early cancels the run and waits for its tasks.
    """

    def __init__(self, start: Callable[..., Awaitable[object]]) -> None:
        self._start = start  # start(session=, extra=) runs the run or map
        self._result: object = _NOT_YET
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Event] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> GraphRun:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.Queue()
        self._task = asyncio.ensure_future(self._main())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        for waiting in self._pending.values():
            waiting.cancel()
        self._pending.clear()

    async def _main(self) -> None:
        self._result = await self._start(session=self, extra=(self._publish,))

    def _publish(self, event: Event) -> None:
        assert self.loop is not None and self._queue is not None
        if threading.get_ident() == self._loop_thread:
            self._queue.put_nowait(event)
        else:  # a sync node in a worker thread: hand the event to the loop, in order
            self.loop.call_soon_threadsafe(self._queue.put_nowait, event)

    # -- the iterator ------------------------------------------------------------
    def __aiter__(self) -> GraphRun:
        return self

    async def __anext__(self) -> Event:
        assert self._queue is not None and self._task is not None, "use `async with` first"
        while True:
            if not self._queue.empty():
                return self._queue.get_nowait()
            if self._task.done():
                await asyncio.sleep(0)  # let callbacks scheduled from threads land
                if not self._queue.empty():
                    continue
                error = self._task.exception()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            getter = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                return getter.result()
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter

    # -- interrupts ----------------------------------------------------------------
    def park(self, event: InterruptEvent) -> asyncio.Future[Any]:
        """Register an interrupt (its event reaches us through the bus) until `respond`."""
        assert self.loop is not None
        waiting = self.loop.create_future()
        self._pending[event.id] = waiting
        return waiting

    @property
    def pending(self) -> list[str]:
        """Ids of the interrupts waiting for an answer."""
        return list(self._pending)

    def respond(self, value: object, id: str | None = None) -> None:
        """Answer the waiting interrupt (name it by ``id`` when several are waiting)."""
        if id is None:
            if not self._pending:
                msg = "respond(): no interrupt is waiting for an answer"
                raise InterruptError(msg)
            if len(self._pending) > 1:
                msg = (
                    f"respond(): {len(self._pending)} interrupts are waiting "
                    f"({', '.join(self._pending)}); pass id= to say which one you answer"
                )
                raise InterruptError(msg)
            id = next(iter(self._pending))
        waiting = self._pending.pop(id, None)
        if waiting is None:
            msg = f"respond(): no interrupt {id!r} is waiting; waiting: {self.pending or 'none'}"
            raise InterruptError(msg)
        assert self.loop is not None
        if threading.get_ident() == self._loop_thread:
            waiting.set_result(value)
        else:
            self.loop.call_soon_threadsafe(waiting.set_result, value)

    @property
    def result(self) -> Any:
        """What ``run`` (or ``map``) returned; available once the events are exhausted."""
        if self._result is _NOT_YET:
            msg = "the run has not finished: iterate over its events to the end first"
            raise RuntimeError(msg)
        return self._result
