"""EngineBroker: lazy starts, exact reference counts, eviction, idle flush, events, pickling.

Real threads and real asyncio tasks; the engine is a small double that records its starts and
stops and can sleep (or block on a gate) in ``start`` to widen races.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import subprocess
import sys
import threading
import time
import weakref

import pytest

from hypernodes_chain.engines import EngineBroker, UnknownEngineError
from hypernodes_chain.events import EngineStarted, EngineStopped, EventBus
from hypernodes_chain.exceptions import CallbackError

TIMEOUT = 5  # seconds: a guard so that a bug fails the test instead of hanging it


class FakeEngine:
    """Records start/stop calls in ``log`` (shared between engines to see their order)."""

    max_concurrency = 1

    def __init__(self, name: str = "e", *, delay: float = 0.0, log: list | None = None) -> None:
        self.name = name
        self.delay = delay
        self.log = [] if log is None else log
        self.starts = 0
        self.stops = 0
        self.gate: threading.Event | None = None  # when set, start() waits for it
        self.entered = threading.Event()  # set once start() has begun

    def __reduce__(self):  # its configuration only, as a real engine keeps its weights home
        return (FakeEngine, (self.name,), {"delay": self.delay})

    def start(self) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        time.sleep(self.delay)
        self.starts += 1
        self.log.append(("start", self.name))

    def stop(self) -> None:
        self.stops += 1
        self.log.append(("stop", self.name))

    def generate(self, prompts, *, schema=None, **sampling):
        return [f"{self.name}:{p}" for p in prompts]

    def identity(self) -> dict:
        return {"model": self.name, "kind": "fake"}


class FailingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__("bad")
        self.fail = True

    def start(self) -> None:
        if self.fail:
            raise OSError("no GPU")
        super().start()


class UnpicklableEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__("held")
        self.lock = threading.Lock()

    __reduce__ = object.__reduce__


def make_small() -> FakeEngine:
    return FakeEngine("small")


def make_large() -> FakeEngine:
    return FakeEngine("large")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recording_bus() -> tuple[EventBus, list]:
    seen: list = []
    return EventBus([seen.append]), seen


def run_threads(target, n: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a thread is stuck"


# -- registering and acquiring ---------------------------------------------------------------


def test_register_starts_nothing():
    built = []
    broker = EngineBroker({"a": FakeEngine("a")})
    broker.register("b", lambda: built.append(1) or FakeEngine("b"))
    assert broker.names() == ("a", "b")
    assert "a" in broker and "z" not in broker
    assert built == []
    assert broker.status() == {
        "a": {"live": False, "refs": 0, "starts": 0, "last_used": None},
        "b": {"live": False, "refs": 0, "starts": 0, "last_used": None},
    }


def test_factory_is_called_once_and_its_engine_reused():
    built: list[FakeEngine] = []

    def factory() -> FakeEngine:
        built.append(FakeEngine("f"))
        return built[-1]

    broker = EngineBroker({"f": factory})
    with broker.acquire("f") as first:
        assert first.generate(["hi"]) == ["f:hi"]
    broker.flush(force=True)
    with broker.acquire("f") as second:
        pass
    assert first is second is built[0] and len(built) == 1
    assert (first.starts, first.stops) == (2, 1)


def test_a_class_is_a_factory():
    broker = EngineBroker({"e": FakeEngine})
    with broker.acquire("e") as engine:
        assert isinstance(engine, FakeEngine) and engine.starts == 1


def test_not_an_engine_nor_a_callable_is_a_type_error():
    with pytest.raises(
        TypeError, match=r"engine 'x' must be an engine .* or a zero-argument factory"
    ):
        EngineBroker({"x": 42})


def test_factory_returning_something_else_is_a_type_error():
    broker = EngineBroker({"x": lambda: "not an engine"})
    message = "the factory of engine 'x' returned 'not an engine'"
    with pytest.raises(TypeError, match=message), broker.acquire("x"):
        pass
    assert broker.status()["x"]["live"] is False


def test_unknown_name_lists_the_registered_names():
    broker = EngineBroker({"small": make_small, "large": make_large})
    message = "unknown engine 'medium'; registered engines: 'small', 'large'"
    with pytest.raises(UnknownEngineError, match=message) as info, broker.acquire("medium"):
        pass
    assert isinstance(info.value, KeyError) and str(info.value) == message

    async def main():
        async with broker.aacquire("medium"):
            pass

    with pytest.raises(KeyError, match=message):
        asyncio.run(main())
    with pytest.raises(KeyError, match="registered engines: none"), EngineBroker().acquire("x"):
        pass


def test_register_replaces_an_idle_engine_and_refuses_one_in_use():
    bus, seen = recording_bus()
    old, new = FakeEngine("old"), FakeEngine("new")
    broker = EngineBroker({"a": old}, bus=bus)
    with broker.acquire("a"), pytest.raises(RuntimeError, match=r"engine 'a' is in use .*1 ref"):
        broker.register("a", new)
    broker.register("a", new)  # idle and live: stopped, then replaced
    assert old.stops == 1
    assert seen[-1] == EngineStopped(path=(), name="a", reason="replaced")
    with broker.acquire("a") as engine:
        assert engine is new
    assert broker.status()["a"]["starts"] == 1  # a new registration counts afresh


def test_a_failed_start_leaves_the_engine_cold_and_the_next_acquire_retries():
    engine = FailingEngine()
    broker = EngineBroker({"bad": engine})
    with pytest.raises(OSError, match="no GPU"), broker.acquire("bad"):
        pass
    assert broker.status()["bad"] == {"live": False, "refs": 0, "starts": 0, "last_used": None}
    engine.fail = False
    with broker.acquire("bad"):
        assert broker.status()["bad"]["live"] is True


# -- reference counts ------------------------------------------------------------------------


def test_ref_counts_exact_under_three_threads():
    broker = EngineBroker({"a": FakeEngine("a", delay=0.01)})
    inside = threading.Barrier(4, timeout=TIMEOUT)
    leave = threading.Event()

    def hold() -> None:
        with broker.acquire("a"):
            inside.wait()
            assert leave.wait(TIMEOUT)

    threads = run_threads(hold, 3)
    inside.wait()
    assert broker.status()["a"]["refs"] == 3
    leave.set()
    join(threads)
    status = broker.status()["a"]
    assert (status["live"], status["refs"], status["starts"]) == (True, 0, 1)


def test_ref_counts_exact_under_three_async_branches():
    broker = EngineBroker({"a": FakeEngine("a", delay=0.01)})
    counts: list[int] = []

    async def main() -> None:
        all_inside = asyncio.Event()
        n_inside = 0

        async def branch() -> None:
            nonlocal n_inside
            async with broker.aacquire("a"):
                n_inside += 1
                if n_inside == 3:
                    all_inside.set()
                await asyncio.wait_for(all_inside.wait(), TIMEOUT)
                counts.append(broker.status()["a"]["refs"])

        await asyncio.gather(branch(), branch(), branch())

    asyncio.run(main())
    assert counts == [3, 2, 1]
    assert broker.status()["a"]["refs"] == 0 and broker.status()["a"]["starts"] == 1


def test_ref_count_released_when_the_body_raises():
    broker = EngineBroker({"a": FakeEngine("a")})
    with pytest.raises(ValueError, match="boom"), broker.acquire("a"):
        raise ValueError("boom")
    assert broker.status()["a"]["refs"] == 0

    async def main() -> None:
        async with broker.aacquire("a"):
            raise ValueError("async boom")

    with pytest.raises(ValueError, match="async boom"):
        asyncio.run(main())
    assert broker.status()["a"]["refs"] == 0 and broker.status()["a"]["live"] is True


def test_a_failing_subscriber_does_not_leak_a_reference():
    def boom(event) -> None:
        raise RuntimeError("console broke")

    broker = EngineBroker({"a": FakeEngine("a")}, bus=EventBus([boom]))
    with pytest.raises(CallbackError, match="console broke"), broker.acquire("a"):
        pass
    assert broker.status()["a"] == {
        "live": True,
        "refs": 0,
        "starts": 1,
        "last_used": broker.status()["a"]["last_used"],
    }


# -- exactly one start -----------------------------------------------------------------------


def test_exactly_one_start_under_eight_threads():
    engine = FakeEngine("a", delay=0.05)
    broker = EngineBroker({"a": engine})
    ready = threading.Barrier(8, timeout=TIMEOUT)
    got: list[object] = []

    def use() -> None:
        ready.wait()
        with broker.acquire("a") as e:
            got.append(e)

    join(run_threads(use, 8))
    assert engine.starts == 1 and len(got) == 8 and all(e is engine for e in got)
    assert broker.status()["a"]["starts"] == 1 and broker.status()["a"]["refs"] == 0


def test_exactly_one_start_under_eight_tasks_without_blocking_the_loop():
    engine = FakeEngine("a", delay=0.05)
    broker = EngineBroker({"a": engine})
    ticks = 0

    async def main() -> list[object]:
        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        async def use() -> object:
            async with broker.aacquire("a") as e:
                await asyncio.sleep(0)
                return e

        tick = asyncio.create_task(ticker())
        got = await asyncio.gather(*(use() for _ in range(8)))
        tick.cancel()
        return got

    got = asyncio.run(main())
    assert engine.starts == 1 and all(e is engine for e in got)
    assert ticks >= 2  # the loop kept running while the engine started in a worker thread
    assert broker.status()["a"]["refs"] == 0


def test_a_cancelled_async_acquire_gives_its_reference_back():
    engine = FakeEngine("a")
    engine.gate = threading.Event()
    broker = EngineBroker({"a": engine})

    async def main() -> None:
        async def use() -> None:
            async with broker.aacquire("a"):
                pytest.fail("the body must not run")

        task = asyncio.create_task(use())
        assert await asyncio.to_thread(engine.entered.wait, TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        engine.gate.set()  # the start finishes in its thread after the caller is gone
        for _ in range(TIMEOUT * 100):
            if broker.status()["a"]["live"]:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert broker.status()["a"]["live"] is True and broker.status()["a"]["refs"] == 0


# -- max_live and eviction -------------------------------------------------------------------


def test_switching_with_max_live_one_evicts_the_first():
    bus, seen = recording_bus()
    log: list = []
    a, b = FakeEngine("a", log=log), FakeEngine("b", log=log)
    broker = EngineBroker({"a": a, "b": b}, max_live=1, bus=bus)
    with broker.acquire("a"):
        pass
    with broker.acquire("b"):
        pass
    with broker.acquire("a"):
        pass
    assert log == [("start", "a"), ("stop", "a"), ("start", "b"), ("stop", "b"), ("start", "a")]
    assert [(type(e).__name__, e.name, getattr(e, "reason", None)) for e in seen] == [
        ("EngineStarted", "a", None),
        ("EngineStopped", "a", "evicted"),
        ("EngineStarted", "b", None),
        ("EngineStopped", "b", "evicted"),
        ("EngineStarted", "a", None),
    ]
    assert all(e.path == () for e in seen)
    assert all(e.seconds >= 0 for e in seen if isinstance(e, EngineStarted))
    status = broker.status()
    assert (status["a"]["starts"], status["b"]["starts"]) == (2, 1)
    assert (status["a"]["live"], status["b"]["live"]) == (True, False)


def test_eviction_picks_the_least_recently_used_idle_engine():
    clock = FakeClock()
    engines = {name: FakeEngine(name) for name in "abc"}
    broker = EngineBroker(engines, max_live=2, clock=clock)
    for name in ["a", "b", "a"]:  # b is now the least recently used
        clock.now += 1
        with broker.acquire(name):
            pass
    with broker.acquire("c"):
        pass
    assert [n for n, s in broker.status().items() if s["live"]] == ["a", "c"]
    assert engines["b"].stops == 1 and engines["a"].stops == 0


def test_acquire_waits_while_every_live_engine_is_in_use():
    log: list = []
    broker = EngineBroker({"a": FakeEngine("a", log=log), "b": FakeEngine("b", log=log)})
    a_in, release_a, b_requested, b_in = (threading.Event() for _ in range(4))

    def hold_a() -> None:
        with broker.acquire("a"):
            a_in.set()
            assert release_a.wait(TIMEOUT)
            log.append("release a")

    def use_b() -> None:
        b_requested.set()
        with broker.acquire("b"):
            b_in.set()

    first = run_threads(hold_a, 1)
    assert a_in.wait(TIMEOUT)
    second = run_threads(use_b, 1)
    assert b_requested.wait(TIMEOUT)
    assert not b_in.wait(0.05)  # still waiting: a is in use
    assert broker.status()["a"]["refs"] == 1 and not broker.status()["b"]["live"]
    release_a.set()
    assert b_in.wait(TIMEOUT)
    join(first + second)
    assert log == [("start", "a"), "release a", ("stop", "a"), ("start", "b")]


def test_async_acquire_waits_for_a_release_without_blocking_the_loop():
    log: list = []
    broker = EngineBroker({"a": FakeEngine("a", log=log), "b": FakeEngine("b", log=log)})

    async def main() -> None:
        a_in = asyncio.Event()

        async def hold_a() -> None:
            async with broker.aacquire("a"):
                a_in.set()
                for _ in range(5):  # the loop runs on while b's acquire waits
                    await asyncio.sleep(0)
                log.append("release a")

        async def use_b() -> None:
            await a_in.wait()
            async with broker.aacquire("b"):
                log.append("b in")

        await asyncio.wait_for(asyncio.gather(hold_a(), use_b()), TIMEOUT)

    asyncio.run(main())
    assert log == [("start", "a"), "release a", ("stop", "a"), ("start", "b"), "b in"]


# -- flush and close -------------------------------------------------------------------------


def test_idle_flush_stops_only_engines_idle_past_idle_seconds():
    bus, seen = recording_bus()
    clock = FakeClock()
    a, b = FakeEngine("a"), FakeEngine("b")
    broker = EngineBroker({"a": a, "b": b}, max_live=2, idle_seconds=180, clock=clock, bus=bus)
    with broker.acquire("a"):
        pass
    clock.now = 100
    with broker.acquire("b"):
        pass
    clock.now = 180
    assert broker.flush() == []  # a idle for exactly 180: not past it
    clock.now = 200
    assert broker.flush() == ["a"]
    assert (a.stops, b.stops) == (1, 0) and broker.status()["b"]["live"]
    clock.now = 281
    assert broker.flush() == ["b"]
    assert seen[-2:] == [
        EngineStopped(path=(), name="a", reason="idle"),
        EngineStopped(path=(), name="b", reason="idle"),
    ]
    assert broker.status()["a"]["last_used"] == 0.0 and broker.status()["b"]["last_used"] == 100


def test_flush_never_stops_an_engine_in_use():
    bus, seen = recording_bus()
    clock = FakeClock()
    engine = FakeEngine("a")
    broker = EngineBroker({"a": engine}, idle_seconds=1, clock=clock, bus=bus)
    with broker.acquire("a"):
        clock.now = 1000
        assert broker.flush() == []
        assert broker.flush(force=True) == []
        assert engine.stops == 0 and broker.status()["a"]["live"]
    assert broker.flush(force=True) == ["a"]
    assert seen[-1] == EngineStopped(path=(), name="a", reason="flush")


def test_close_stops_every_live_engine_even_in_use():
    bus, seen = recording_bus()
    a, b, c = FakeEngine("a"), FakeEngine("b"), FakeEngine("c")
    broker = EngineBroker({"a": a, "b": b, "c": c}, max_live=3, bus=bus)
    with broker.acquire("b"):
        pass
    with broker.acquire("a"):
        broker.close()
        assert broker.status()["a"] == {
            "live": False,
            "refs": 1,
            "starts": 1,
            "last_used": broker.status()["a"]["last_used"],
        }
    assert (a.stops, b.stops, c.stops) == (1, 1, 0)
    assert {(e.name, e.reason) for e in seen if isinstance(e, EngineStopped)} == {
        ("a", "close"),
        ("b", "close"),
    }
    assert broker.status()["a"]["refs"] == 0
    with broker.acquire("a"):  # still usable: starts again
        assert a.starts == 2


def test_with_block_closes_the_broker():
    engine = FakeEngine("a")
    with EngineBroker({"a": engine}) as broker, broker.acquire("a"):
        pass
    assert engine.stops == 1 and not broker.status()["a"]["live"]


def test_a_collected_broker_stops_its_engines_and_is_not_kept_alive():
    engine = FakeEngine("a")
    broker = EngineBroker({"a": engine})
    with broker.acquire("a"):
        pass
    ref = weakref.ref(broker)
    del broker
    gc.collect()
    assert ref() is None
    assert engine.stops == 1


def test_status_and_repr():
    clock = FakeClock()
    clock.now = 7.5
    broker = EngineBroker({"a": FakeEngine("a"), "b": make_small}, clock=clock)
    with broker.acquire("a"):
        assert broker.status() == {
            "a": {"live": True, "refs": 1, "starts": 1, "last_used": 7.5},
            "b": {"live": False, "refs": 0, "starts": 0, "last_used": None},
        }
    assert repr(broker) == "EngineBroker(['a', 'b'], live=['a'], max_live=1)"


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="max_live must be at least 1, got 0"):
        EngineBroker(max_live=0)
    with pytest.raises(ValueError, match="idle_seconds must be 0 or more, got -1"):
        EngineBroker(idle_seconds=-1)
    for bad in (1.5, True, "2"):  # 1.5 once acted as 2
        with pytest.raises(ValueError, match=f"max_live must be at least 1, got {bad!r}"):
            EngineBroker(max_live=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_seconds must be 0 or more, got nan"):
        EngineBroker(idle_seconds=float("nan"))
    with pytest.raises(TypeError, match="idle_seconds must be a number of seconds"):
        EngineBroker(idle_seconds="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be a callable"):
        EngineBroker(clock=3.0)  # type: ignore[arg-type]


# -- events ----------------------------------------------------------------------------------


def test_events_in_order_and_only_on_an_active_bus():
    bus, seen = recording_bus()
    broker = EngineBroker({"a": make_small, "b": make_large}, max_live=1)
    with broker.acquire("a"):
        pass  # no bus yet: nothing published
    broker.bus = bus
    with broker.acquire("b"):
        pass
    broker.flush(force=True)
    broker.bus = EventBus()  # no subscriber: inactive
    with broker.acquire("a"):
        pass
    assert [(type(e).__name__, e.name) for e in seen] == [
        ("EngineStopped", "a"),
        ("EngineStarted", "b"),
        ("EngineStopped", "b"),
    ]
    assert [getattr(e, "reason", None) for e in seen] == ["evicted", None, "flush"]


# -- pickling --------------------------------------------------------------------------------


def test_pickling_sends_the_registrations_unstarted():
    clock = FakeClock()
    broker = EngineBroker(
        {"small": make_small, "large": make_large}, max_live=2, idle_seconds=9, clock=clock
    )
    with broker.acquire("small") as original:
        copy = pickle.loads(pickle.dumps(broker))
    assert copy.names() == ("small", "large")
    assert (copy.max_live, copy.idle_seconds, copy.bus) == (2, 9, None)
    assert all(not s["live"] and s["starts"] == 0 for s in copy.status().values())
    with copy.acquire("small") as rebuilt:
        assert rebuilt is not original and rebuilt.starts == 1
    assert original.starts == 1 and broker.status()["small"]["starts"] == 1


def test_pickling_an_engine_object_that_does_not_pickle_names_it():
    broker = EngineBroker({"held": UnpicklableEngine(), "ok": make_small})
    with pytest.raises(
        TypeError,
        match=r"engine 'held' \(UnpicklableEngine\) cannot be pickled: .*register a factory",
    ):
        pickle.dumps(broker)


def test_an_engine_object_that_pickles_travels():
    broker = EngineBroker({"a": FakeEngine("a")})
    with broker.acquire("a"):
        pass
    copy = pickle.loads(pickle.dumps(broker))
    assert copy.status()["a"]["live"] is False
    with copy.acquire("a") as engine:
        assert engine.starts == 1 and engine.name == "a"


# -- import hygiene --------------------------------------------------------------------------


def test_importing_the_package_imports_no_engine_library():
    code = (
        "import sys, hypernodes_chain, hypernodes_chain.engines;"
        "heavy = {'torch', 'transformers', 'vllm', 'ollama', 'openai', 'httpx'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
