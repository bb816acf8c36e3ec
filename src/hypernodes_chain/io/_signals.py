"""Critical sections that a Ctrl-C cannot cut in half.

A writer's commit (write a shard, update the manifest, clear the buffer) and its buffer
updates must happen whole or not at all. ``KeyboardInterrupt`` is raised by Python's SIGINT
handler between any two bytecodes, so inside `deferred_interrupts` the handler only notes
the signal; it is re-delivered the moment the section ends, to whatever handler was there
before (Python's own, asyncio's, a user's).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["deferred_interrupts"]


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT until the block is done, then deliver it (outside the main thread,
    where no signal handler runs, this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, FrameType | None]] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append((signum, frame))

    try:
        previous: Any = signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            _deliver(previous, *received[0])


def _deliver(handler: Any, signum: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        raise KeyboardInterrupt
    # SIG_IGN: the signal was meant to be ignored
