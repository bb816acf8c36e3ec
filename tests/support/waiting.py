"""Waiting in tests for what another thread, task, process or server does: poll the state
it changes (a row committed, a request seen, a slot taken) until it holds, never a guessed
duration. The deadline only bounds a broken run, so the suite holds on a loaded machine::

    wait_until(lambda: slots.waiting == 2, "two waiters")
    await await_until(lambda: held_by_vllm(engine) >= 8, "vLLM holding the 8 requests")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

__all__ = ["await_until", "poll_until", "wait_until"]

_EVERY = 0.002  # seconds between two looks


def poll_until(done: Callable[[], bool], timeout: float) -> bool:
    """Look at ``done()`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(_EVERY)
    return True


def wait_until(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Until ``done()`` holds; the test fails, naming ``what``, after ``timeout`` seconds."""
    if not poll_until(done, timeout):
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


async def await_until(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """`wait_until` for a coroutine: other tasks of the loop run between two looks."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(_EVERY)  # the loop runs the tasks being waited on meanwhile
