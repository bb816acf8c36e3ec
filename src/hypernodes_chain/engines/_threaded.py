"""A blocking token stream as an async iterator: for engines whose one streaming body is
blocking (transformers' generation thread, the HTTP engines' clients)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

__all__ = ["stream_in_thread"]


async def stream_in_thread(
    chunks_of: Callable[[threading.Event], Iterator[str]],
    executor: Executor | None = None,
) -> AsyncGenerator[str, None]:
    """Yield the chunks of ``chunks_of(cancel)``, run in a thread of ``executor`` (the
    loop's default one when None); closing the iterator early sets ``cancel`` (the body
    stops at its next chunk) and waits for the thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        chunks = chunks_of(cancel)
        try:
            for chunk in chunks:
                put(("chunk", chunk))
        except BaseException as exc:
            put(("error", exc))
        else:
            put(("end", None))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    worker = loop.run_in_executor(executor, pump)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "chunk":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        cancel.set()
        await asyncio.shield(worker)
