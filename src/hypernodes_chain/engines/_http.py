"""What an HTTP engine holds: one client, one pool, one Slots (and an async client per loop).

Every request of the engine, whoever sends it (threads of any runner, tasks of any event
loop, any node or batch), takes one of its `Slots`, so ``max_concurrency`` is the number of
requests in flight on that engine in this process. The prompts of `generate` and
`agenerate` calls all go to the engine's one thread pool (`map`, `amap`), so concurrent
calls share it, are served in arrival order, and share the client's connections; a
coroutine awaits its prompts without holding a thread.

Why the pool for async callers too: measured on the loopback Ollama server (50 ms replies,
8 in flight, 2 cores), requests sent from one event loop's thread through an
``httpx.AsyncClient`` reached 0.88-0.90 of 8 client threads (0.6-0.77 on a loaded host),
the same requests through the pool 0.93-1.0: the loop's one thread does every request's
parsing and socket calls, and competes with the runner's own work.

Clients are opened on first use and kept, so connections are reused across calls (an engine
dropped without being stopped closes its sync client when it is collected). Streams to a
coroutine (``astream``) use an async client: one per loop, as an async client belongs to the
loop it first ran on, weakly keyed by the loop, and closed when that loop shuts down
(``asyncio.run`` closes the async generators of its loop; a suspended one here closes the
client) or at `Connections.close`, whichever comes first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from ._slots import Slots

__all__ = ["Connections"]

T = TypeVar("T")
A = TypeVar("A")

_CLOSE_WAIT = 5.0  # seconds `close` waits for a loop in another thread to close its client


@dataclass(eq=False)
class _LoopClient:
    client: Any
    keeper: AsyncGenerator[None, None]  # suspended; closing it closes the client


class Connections:
    """One engine's clients, pool and slots (opened lazily, closed by `close`).

    Parameters
    ----------
    max_concurrency
        Requests in flight at once, from every caller together; also the pool's threads and
        each client's connections.
    name
        The thread name prefix of the pool.
    open_client, open_async_client
        Build the sync client (closed with ``close()``) and an async client.
    close_async_client
        Close an async client (awaited in its own loop).
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        name: str,
        open_client: Callable[[], Any],
        open_async_client: Callable[[], Any],
        close_async_client: Callable[[Any], Awaitable[Any]],
    ) -> None:
        self.slots = Slots(max_concurrency)
        self._name = name
        self._open = open_client
        self._open_async = open_async_client
        self._close_async = close_async_client
        self._lock = threading.Lock()
        self._client: Any = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[asyncio.Task[None]] = set()

    def client(self) -> Any:
        """The engine's client (thread-safe; opened on first use)."""
        with self._lock:
            if self._client is None:
                self._client = self._open()
                self._closer = weakref.finalize(self, self._client.close)
            return self._client

    def _submit(self, fn: Callable[[A], T], items: Iterable[A]) -> list[Future[T]]:
        with self._lock:
            if self._pool is None:
                workers = self.slots.n
                self._pool = concurrent.futures.ThreadPoolExecutor(workers, self._name)
            pool = self._pool
        return [pool.submit(fn, item) for item in items]

    def map(self, fn: Callable[[A], T], items: Iterable[A]) -> list[T]:
        """``fn`` of each item on the engine's pool, the results in order."""
        futures = self._submit(fn, items)
        try:
            return [future.result() for future in futures]
        except BaseException:  # interrupted: what has not started will not
            for future in futures:
                future.cancel()
            raise

    async def amap(self, fn: Callable[[A], T], items: Iterable[A]) -> list[T]:
        """The async twin of `map`: awaited without holding a thread (cancelling it cancels
        what has not started)."""
        futures = self._submit(fn, items)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    async def async_client(self) -> Any:
        """The async client of the running loop (opened on first use in that loop), for
        streams to a coroutine."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.get(loop)
            if entry is not None:
                return entry.client
            client = self._open_async()
            entry = self._loops[loop] = _LoopClient(client, self._keep(client))
        # a first step registers the generator with the loop, whose shutdown closes it
        await entry.keeper.__anext__()
        return client

    async def _keep(self, client: Any) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                for loop, entry in list(self._loops.items()):
                    if entry.client is client:
                        del self._loops[loop]
            await self._close_async(client)

    def close(self) -> None:
        """Close the clients and the pool (idempotent); a later call opens new ones.

        An async client whose loop runs is closed in that loop; one whose loop is idle is
        closed when that loop shuts down."""
        with self._lock:
            closer, self._closer, self._client = self._closer, None, None
            pool, self._pool = self._pool, None
            for loop in [loop for loop in self._loops if loop.is_closed()]:
                del self._loops[loop]  # closed without shutting down: nothing left to run
            loops = list(self._loops.items())
        if pool is not None:
            pool.shutdown(wait=True)
        if closer is not None:
            closer()  # closes the client, once
        for loop, entry in loops:
            self._close_in(loop, entry)

    def _close_in(self, loop: asyncio.AbstractEventLoop, entry: _LoopClient) -> None:
        if not loop.is_running():
            return  # an idle loop closes it when it shuts down
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # called from a coroutine of that very loop: cannot block it
            task = loop.create_task(_close(entry.keeper))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(entry.keeper), loop).result(_CLOSE_WAIT)


async def _close(keeper: AsyncGenerator[None, None]) -> None:
    await keeper.aclose()
