"""Running a coroutine from sync code: one event loop per thread, reused.

Below the runners and the interrupts, so both can use it without importing each other.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["close_finished_loops", "run_coroutine", "running_loop"]

_local = threading.local()
_loops: list[tuple[threading.Thread, asyncio.AbstractEventLoop]] = []  # made off the main thread
_loops_lock = threading.Lock()


def close_finished_loops() -> None:
    """Close the loops of threads that have ended (a runner's pool after its shutdown)."""
    with _loops_lock:
        for item in [x for x in _loops if not x[0].is_alive()]:
            _loops.remove(item)
            if not item[1].is_closed():
                item[1].close()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, reusing one loop per thread.

    Called from inside a running loop (a notebook cell calling ``Runner().run``), it runs
    the coroutine on a helper thread instead, since a loop cannot be re-entered.
    """
    if running_loop() is None:
        loop = getattr(_local, "loop", None)
        if loop is None or loop.is_closed():
            loop = _local.loop = asyncio.new_event_loop()
            thread = threading.current_thread()
            if thread is not threading.main_thread():
                with _loops_lock:
                    _loops.append((thread, loop))
        return loop.run_until_complete(coro)
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
