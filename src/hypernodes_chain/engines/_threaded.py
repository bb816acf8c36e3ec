"""A blocking token stream as an async iterator: for local engines whose generation runs
in a thread (transformers, vLLM offline)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

__all__ = ["stream_in_thread"]


async def stream_in_thread(
    chunks_of: Callable[[threading.Event], Iterator[str]],
) -> AsyncGenerator[str, None]:
    """Yield the chunks of ``chunks_of(cancel)``, run in a worker thread; closing the
    iterator early sets ``cancel`` (the generation stops) and waits for the thread."""
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

    worker = loop.run_in_executor(None, pump)
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
