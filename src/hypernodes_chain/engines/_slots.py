"""Slots: at most ``n`` holders at once, shared by every thread and every event loop.

An engine's ``max_concurrency`` bounds its requests in flight in this process, whoever sends
them: threads of a pool (``with slots:``) and coroutines of any number of event loops
(``async with slots:``) take the same slots. Neither `threading.Semaphore` (it would block a
loop's thread) nor `asyncio.Semaphore` (bound to one loop) can do both.

One lock guards a counter and a FIFO of waiters. A release hands its slot straight to the
first waiter (the count does not change), so waiters are served in arrival order and a
newcomer never overtakes them. A thread waits on a `threading.Event`; a coroutine on a future
of its own loop, resolved with ``loop.call_soon_threadsafe``, so it holds no thread while it
waits. A waiter that gives up (a cancelled task, an interrupted thread) either leaves the queue
or, when a slot was already handed to it, passes that slot on: no slot is ever leaked.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from types import TracebackType

__all__ = ["Slots"]


class _Waiter:
    """One thread or task waiting for a slot; ``granted`` is read and written under the lock."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.granted = False
        self.loop = loop
        self.future = future
        self.event = threading.Event() if future is None else None

    def wake(self) -> bool:
        """Tell the waiter it holds a slot; False when it can no longer be told (its loop
        is closed), and the slot goes to the next waiter."""
        if self.event is not None:
            self.event.set()
            return True
        assert self.loop is not None and self.future is not None
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop is closed: nobody will ever await this future
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled waiter gives its slot back itself
        future.set_result(None)


class Slots:
    """At most ``n`` holders at once across threads and event loops, served in FIFO order.

    Parameters
    ----------
    n
        How many may hold a slot at once (>= 1).
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            msg = f"Slots needs n >= 1, got {n!r}"
            raise ValueError(msg)
        self.n = n
        self._lock = threading.Lock()
        self._held = 0
        self._waiters: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        return f"Slots({self.n}, held={self._held}, waiting={len(self._waiters)})"

    @property
    def held(self) -> int:
        """Slots held now."""
        return self._held

    @property
    def waiting(self) -> int:
        """Threads and tasks waiting for a slot now."""
        return len(self._waiters)

    def _take_or_queue(self, waiter: _Waiter) -> bool:
        """Take a free slot (True), or queue ``waiter`` behind the ones already waiting."""
        with self._lock:
            if self._held < self.n and not self._waiters:
                self._held += 1
                return True
            self._waiters.append(waiter)
            return False

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiter stops waiting: out of the queue, or its slot passed on if it had one."""
        with self._lock:
            if not waiter.granted:
                self._waiters.remove(waiter)
                return
        self.release()

    def acquire(self) -> None:
        """Wait (blocking this thread) for a slot."""
        waiter = _Waiter()
        if self._take_or_queue(waiter):
            return
        assert waiter.event is not None
        try:
            waiter.event.wait()
        except BaseException:  # KeyboardInterrupt in the main thread
            self._give_up(waiter)
            raise

    async def aacquire(self) -> None:
        """Wait (without holding a thread) for a slot."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future())
        if self._take_or_queue(waiter):
            return
        assert waiter.future is not None
        try:
            await waiter.future
        except BaseException:  # cancelled: a slot granted meanwhile goes to the next one
            self._give_up(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter, else to the pool."""
        with self._lock:
            if self._held < 1:
                msg = "Slots.release() called more times than acquire()"
                raise RuntimeError(msg)
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True
                if waiter.wake():
                    return
            self._held -= 1

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> None:
        await self.aacquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
