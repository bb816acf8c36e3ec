"""Slots: one limit shared by threads and event loops (engines/_slots.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypernodes_chain.engines._slots import Slots
from support.waiting import await_until, wait_until


class Holders:
    """Counts who holds a slot now, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1
            self.done += 1


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 4), rounds=st.integers(5, 30))
def test_never_more_than_n_holders_across_threads_and_loops(n: int, rounds: int) -> None:
    slots = Slots(n)
    holders = Holders()

    def thread_worker() -> None:
        for _ in range(rounds):
            with slots:
                holders.enter()
                time.sleep(0.0005)
                holders.leave()

    async def task_worker() -> None:
        for _ in range(rounds):
            async with slots:
                holders.enter()
                await asyncio.sleep(0.0005)
                holders.leave()

    async def loop_main() -> None:
        await asyncio.gather(*(task_worker() for _ in range(3)))

    threads = [threading.Thread(target=thread_worker) for _ in range(4)]
    threads += [threading.Thread(target=asyncio.run, args=(loop_main(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert holders.done == (4 + 2 * 3) * rounds  # all complete
    assert 1 <= holders.peak <= n
    assert slots.held == 0 and slots.waiting == 0


def test_waiters_are_served_in_arrival_order_threads_and_tasks_alike() -> None:
    slots = Slots(1)
    order: list[str] = []
    slots.acquire()

    def thread_waiter(name: str) -> None:
        with slots:
            order.append(name)

    async def task_waiter(name: str) -> None:
        async with slots:
            order.append(name)

    threads = []
    for k, name in enumerate(["t0", "a1", "t2", "a3"]):
        if name.startswith("t"):
            thread = threading.Thread(target=thread_waiter, args=(name,))
        else:
            thread = threading.Thread(target=asyncio.run, args=(task_waiter(name),))
        thread.start()
        threads.append(thread)
        wait_until(lambda k=k: slots.waiting == k + 1, f"{k + 1} waiters")
    slots.release()
    for thread in threads:
        thread.join(10)
    assert order == ["t0", "a1", "t2", "a3"]
    assert slots.held == 0


def test_a_newcomer_does_not_overtake_a_waiter() -> None:
    slots = Slots(1)
    slots.acquire()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: (slots.acquire(), got.append("waiter")))
    waiter.start()
    wait_until(lambda: slots.waiting == 1, "the waiter")
    slots.release()  # handed to the waiter: no free slot appears for a newcomer to take
    assert slots.held == 1
    waiter.join(10)
    assert got == ["waiter"] and slots.held == 1
    slots.release()
    assert slots.held == 0


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    async def main() -> None:
        slots = Slots(1)
        async with slots:
            waiter = asyncio.create_task(slots.aacquire())
            await await_until(lambda: slots.waiting == 1, "the waiting task")
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert slots.waiting == 0
        assert slots.held == 0
        # granted and cancelled before it could run: the slot goes back
        slots.acquire()
        waiter = asyncio.create_task(slots.aacquire())
        await await_until(lambda: slots.waiting == 1, "the waiting task")
        slots.release()  # granted to the waiter, which has not resumed yet
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.held == 0 and slots.waiting == 0
        await asyncio.wait_for(slots.aacquire(), 5)  # free at once
        slots.release()

    asyncio.run(main())


def test_a_cancelled_waiter_passes_its_slot_to_the_next_one() -> None:
    async def main() -> None:
        slots = Slots(1)
        slots.acquire()
        first = asyncio.create_task(slots.aacquire())
        second = asyncio.create_task(slots.aacquire())
        await await_until(lambda: slots.waiting == 2, "both waiting tasks")
        slots.release()  # granted to the first
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 5)  # the first's slot went to the second
        assert slots.held == 1
        slots.release()
        assert slots.held == 0

    asyncio.run(main())


def test_an_async_waiter_holds_no_thread() -> None:
    async def main() -> None:
        slots = Slots(1)
        slots.acquire()
        before = threading.active_count()
        waiters = [asyncio.create_task(slots.aacquire()) for _ in range(50)]
        await await_until(lambda: slots.waiting == 50, "the 50 waiting tasks")
        assert threading.active_count() == before
        for _ in range(51):
            slots.release()  # to the next waiter, in order; the last one frees the slot
        await asyncio.gather(*waiters)
        assert slots.held == 0

    asyncio.run(main())


def test_bad_arguments_and_extra_releases() -> None:
    with pytest.raises(ValueError, match="n >= 1, got 0"):
        Slots(0)
    with pytest.raises(ValueError, match="got True"):
        Slots(True)
    slots = Slots(2)
    with pytest.raises(RuntimeError, match="more times than acquire"):
        slots.release()
    assert repr(slots) == "Slots(2, held=0, waiting=0)"
