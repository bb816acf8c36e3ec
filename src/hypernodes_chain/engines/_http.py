"""What an HTTP engine holds: one client, one pool, one Slots.

Every request of the engine, whoever sends it (threads of any runner, tasks of any event
loop, any node or batch), takes one of its `Slots`, so ``max_concurrency`` is the number of
requests in flight on that engine in this process. The prompts of `generate` and
`agenerate` calls all go to the engine's one thread pool (`map`, `amap`), so concurrent
calls share it, are served in arrival order, and share the client's connections; a
coroutine awaits its prompts without holding a thread. A stream to a coroutine (`astream`)
runs the engine's one streaming body on a pool thread and hands its chunks to the loop.

Why the pool for async callers too: measured on the loopback Ollama server (50 ms replies,
8 in flight, 2 cores), requests sent from one event loop's thread through an
``httpx.AsyncClient`` reached 0.88-0.90 of 8 client threads (0.6-0.77 on a loaded host),
the same requests through the pool 0.93-1.0: the loop's one thread does every request's
parsing and socket calls, and competes with the runner's own work.

The client is opened on first use and kept, so connections are reused across calls (an
engine dropped without being stopped closes it when it is collected).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from ._slots import Slots
from ._threaded import stream_in_thread

__all__ = ["Connections"]

T = TypeVar("T")
A = TypeVar("A")


class Connections:
    """One engine's clients, pool and slots (opened lazily, closed by `close`).

    Parameters
    ----------
    max_concurrency
        Requests in flight at once, from every caller together; also the pool's threads and
        each client's connections.
    name
        The thread name prefix of the pool.
    open_client
        Build the client (closed with ``close()``).
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        name: str,
        open_client: Callable[[], Any],
    ) -> None:
        self.slots = Slots(max_concurrency)
        self._name = name
        self._open = open_client
        self._lock = threading.Lock()
        self._client: Any = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def client(self) -> Any:
        """The engine's client (thread-safe; opened on first use)."""
        with self._lock:
            if self._client is None:
                self._client = self._open()
                self._closer = weakref.finalize(self, self._client.close)
            return self._client

    def _the_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                workers = self.slots.n
                self._pool = concurrent.futures.ThreadPoolExecutor(workers, self._name)
            return self._pool

    def _submit(self, fn: Callable[[A], T], items: Iterable[A]) -> list[Future[T]]:
        pool = self._the_pool()
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

    def astream(
        self, chunks_of: Callable[[threading.Event], Iterator[str]]
    ) -> AsyncGenerator[str, None]:
        """The chunks of the engine's streaming body ``chunks_of(cancel)``, run on the pool
        and awaited without holding a thread; closing the iterator early sets ``cancel``."""
        return stream_in_thread(chunks_of, executor=self._the_pool())

    def close(self) -> None:
        """Close the client and the pool (idempotent); a later call opens new ones. Streams
        under way end first (the pool waits for its threads)."""
        with self._lock:
            closer, self._closer, self._client = self._closer, None, None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if closer is not None:
            closer()  # closes the client, once
