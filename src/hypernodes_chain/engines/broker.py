"""The engine broker: named engines started on first use, shared, and stopped to free memory.

Every decision (take a reference, reserve a start, pick the engine to evict, or wait) is
made in one place, `EngineBroker._claim`, under one lock; the sync and async acquires only
drive it: a thread waits on the condition, a task on a future that the next state change
resolves. Starting and stopping (slow: a model load, a GPU release) run outside the lock,
so other engines stay usable meanwhile, and the async twin runs them in a worker thread.

A registration is in one of four states. The states other than ``cold`` count against
``max_live``, so an engine being stopped still holds its place until its memory is free::

    cold --claim--> starting --start()--> live --evict/flush/close--> stopping --stop()--> cold

The broker also holds resources (``hypernodes_chain.resources``: a tokenizer, a connection
pool) by the same rules, with three differences: building one is calling its factory (no
``start()``), releasing one is closing what the factory built (an object registered as it
is stays open), and resources neither count against ``max_live`` nor are evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, TypeGuard

from .. import resources
from ..events import EngineStarted, EngineStopped, Event, EventBus
from ..exceptions import UnknownEngineError, UnknownResourceError
from .base import Engine

__all__ = ["EngineBroker", "EngineStatus", "Lease", "UnknownEngineError"]

EngineFactory = Callable[[], Engine]
Clock = Callable[[], float]

_COLD, _STARTING, _LIVE, _STOPPING = "cold", "starting", "live", "stopping"
_ENGINE, _RESOURCE = "engine", "resource"


class EngineStatus(TypedDict):
    """One engine's line in `EngineBroker.status`."""

    live: bool
    refs: int
    starts: int
    last_used: float | None


@dataclass(eq=False)
class _Slot:
    """One registration and its state; every field is read and written under the lock."""

    name: str
    source: Any  # the engine, resource or factory, as registered (what pickling sends)
    engine: Any  # the engine or resource; None until a factory has built it
    kind: str = _ENGINE
    state: str = _COLD
    refs: int = 0
    starts: int = 0
    last_used: float | None = None
    identity: str | None = None  # a resource's, as computed where it was registered

    @property
    def owned(self) -> bool:
        """A resource the broker builds (from a factory), so it also closes it."""
        return self.kind == _RESOURCE and resources.is_factory(self.source)


@dataclass(frozen=True)
class _Claim:
    slot: _Slot
    ready: bool  # a reference is taken; otherwise a start is reserved
    victim: _Slot | None = None  # the idle engine to stop first


def _is_engine(obj: object) -> TypeGuard[Engine]:
    """True for an engine object, False for a factory (a class or a plain callable)."""
    if isinstance(obj, type):
        return False
    return callable(getattr(obj, "start", None)) and callable(getattr(obj, "generate", None))


class EngineBroker:
    """Named engines, started on first use, shared by reference count, stopped when idle.

    Parameters
    ----------
    engines
        ``{name: engine or factory}``, registered as by `register`.
    resources
        ``{name: resource or factory}``, registered as by `register_resource`.
    max_live
        How many engines may be alive at once; acquiring another stops the least recently
        used idle one first, and waits (never fails) while every live engine is in use.
    idle_seconds
        How long an engine may stay idle before ``flush()`` stops it.
    clock
        The time source for ``last_used`` and idle flushing (seconds, monotonic).

    ``bus`` (an `EventBus`, or None) receives `EngineStarted` and `EngineStopped`; a runner
    sets it for the duration of a run. ``close()``, the ``with`` block's exit, interpreter exit
    and garbage collection stop every live engine.

    A broker pickles as its registrations, unstarted, so each worker process rebuilds its own:
    factories travel as they are; an engine object travels only if it pickles, and should
    pickle as its constructor arguments (the engines of this package do, started or not:
    each process then builds and starts its own), else pickling is a `TypeError` naming it.
    A thread that holds one engine and acquires another with every place taken waits for
    itself: release before switching.
    """

    def __init__(
        self,
        engines: Mapping[str, Engine | EngineFactory] | None = None,
        *,
        resources: Mapping[str, object] | None = None,
        max_live: int = 1,
        idle_seconds: float = 180,
        clock: Clock = time.monotonic,
        bus: EventBus | None = None,
    ) -> None:
        if isinstance(max_live, bool) or not isinstance(max_live, int) or max_live < 1:
            msg = f"max_live must be at least 1, got {max_live!r} (a whole number of engines)"
            raise ValueError(msg)
        if isinstance(idle_seconds, bool) or not isinstance(idle_seconds, (int, float)):
            msg = f"idle_seconds must be a number of seconds, got {idle_seconds!r}"
            raise TypeError(msg)
        if not idle_seconds >= 0:  # NaN included
            msg = f"idle_seconds must be 0 or more, got {idle_seconds!r}"
            raise ValueError(msg)
        if not callable(clock):
            msg = f"clock must be a callable that returns seconds, got {clock!r}"
            raise TypeError(msg)
        self.max_live = max_live
        self.idle_seconds = idle_seconds
        self.bus = bus
        self._clock = clock
        self._slots: dict[str, _Slot] = {}  # mutated, never rebound: the finalizer holds it
        self._cond = threading.Condition(threading.Lock())
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        weakref.finalize(self, _stop_at_exit, self._slots, self._cond)
        for name, source in (engines or {}).items():
            self.register(name, source)
        for name, kept in (resources or {}).items():
            self.register_resource(name, kept)

    # -- registrations ---------------------------------------------------------------------

    def register(self, name: str, engine_or_factory: Engine | EngineFactory) -> None:
        """Register an engine, or a zero-argument factory called on first acquire.

        Nothing starts. An idle registration of the same name is replaced (stopped first
        if it is live).

        Raises
        ------
        TypeError
            When ``engine_or_factory`` is neither an engine nor a callable.
        RuntimeError
            When the name is in use (acquired, starting or stopping).
        """
        engine = engine_or_factory if _is_engine(engine_or_factory) else None
        if engine is None and not callable(engine_or_factory):
            msg = (
                f"engine {name!r} must be an engine (with start() and generate()) or a "
                f"zero-argument factory that builds one, got {engine_or_factory!r}"
            )
            raise TypeError(msg)
        self._register(_Slot(name, engine_or_factory, engine))

    def register_resource(self, name: str, resource_or_factory: object) -> None:
        """Register a resource, or a zero-argument factory called on first use.

        A class, function, method or ``functools.partial`` is a factory; any other object
        is the resource itself, used as it is in this process (and pickled to go to worker
        processes). Nothing is built. An idle registration of the same name is replaced.

        Raises
        ------
        TypeError
            When ``name`` is not a non-empty str.
        RuntimeError
            When the name is in use (acquired, starting or stopping).
        """
        if not isinstance(name, str) or not name:
            msg = f"a resource's name must be a non-empty str, got {name!r}"
            raise TypeError(msg)
        self._register(_Slot(name, resource_or_factory, None, kind=_RESOURCE))

    def _register(self, new: _Slot) -> None:
        name = new.name
        with self._cond:
            old = self._slots.get(name)
            if old is not None and (old.refs or old.state in (_STARTING, _STOPPING)):
                msg = (
                    f"{old.kind} {name!r} is in use ({old.refs} references, {old.state}); "
                    "register its replacement once it is released"
                )
                raise RuntimeError(msg)
            if old is None or old.state == _COLD:
                self._slots[name] = new
                return
            old.state = _STOPPING
        try:
            self._stop([old], "replaced")
        finally:
            with self._cond:
                self._slots[name] = new
                self._notify()

    def names(self) -> tuple[str, ...]:
        """The registered names (engines and resources), in registration order."""
        with self._cond:
            return tuple(self._slots)

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    # -- acquiring -------------------------------------------------------------------------

    @contextlib.contextmanager
    def acquire(self, name: str) -> Iterator[Engine]:
        """``with broker.acquire(name) as engine:`` the engine, started on first use.

        Raises
        ------
        UnknownEngineError
            When ``name`` is not registered; the message lists the registered names.
        """
        claim = self._wait_claim(name, _ENGINE)
        engine, events = self._bring_up(claim)
        try:
            self._publish(events)
            yield engine
        finally:
            self._release(claim.slot)

    @contextlib.asynccontextmanager
    async def aacquire(self, name: str) -> AsyncIterator[Engine]:
        """The async twin of `acquire`: waits and starts without blocking the event loop."""
        claim = await self._await_claim(name, _ENGINE)
        engine, events = await self._abring_up(claim)
        try:
            self._publish(events)
            yield engine
        finally:
            self._release(claim.slot)

    def lease(self, name: str) -> Lease:
        """The resource ``name``, built on first use, held until the lease is released
        (``lease.release()``, or a ``with lease:`` block's exit).

        Raises
        ------
        UnknownResourceError
            When ``name`` is not a registered resource; the message lists the registered ones.
        """
        claim = self._wait_claim(name, _RESOURCE)
        value, _ = self._bring_up(claim)
        return Lease(self, claim.slot, value)

    async def alease(self, name: str) -> Lease:
        """The async twin of `lease`: a factory runs in a worker thread; callers that
        arrive meanwhile wait for it, and share what it built."""
        claim = await self._await_claim(name, _RESOURCE)
        value, _ = await self._abring_up(claim)
        return Lease(self, claim.slot, value)

    def leased(self, name: str) -> Any:
        """The live resource ``name``, for a caller that holds a lease on it (read without
        the lock: a leased resource stays as it is until its leases are released)."""
        slot = self._slots.get(name)
        if slot is None or slot.kind != _RESOURCE or slot.state not in (_LIVE, _STOPPING):
            msg = f"resource {name!r} is not leased: lease it first (EngineBroker.lease)"
            raise RuntimeError(msg)
        return slot.engine

    def _wait_claim(self, name: str, kind: str) -> _Claim:
        with self._cond:
            while (claim := self._claim(name, kind)) is None:
                self._cond.wait()
        return claim

    async def _await_claim(self, name: str, kind: str) -> _Claim:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                claim = self._claim(name, kind)
                if claim is None:
                    waiter = loop.create_future()
                    self._waiters.append((loop, waiter))
            if claim is not None:
                return claim
            try:
                await waiter
            finally:
                with self._cond, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, waiter))

    def _claim(self, name: str, kind: str) -> _Claim | None:
        """Under the lock: take a reference, reserve a start, or return None to wait."""
        slot = self._slot(name, kind)
        if slot.state == _LIVE:
            slot.refs += 1
            slot.last_used = self._clock()
            return _Claim(slot, ready=True)
        if slot.state != _COLD:
            return None  # another caller is starting or stopping it
        victim = None
        engines = [s for s in self._slots.values() if s.kind == _ENGINE]
        if kind == _ENGINE and sum(s.state != _COLD for s in engines) >= self.max_live:
            idle = [s for s in engines if s.state == _LIVE and not s.refs]
            if not idle:
                return None  # every place is in use: wait for a release
            victim = min(idle, key=lambda s: s.last_used or 0.0)
            victim.state = _STOPPING
        slot.state = _STARTING
        return _Claim(slot, ready=False, victim=victim)

    def _slot(self, name: str, kind: str) -> _Slot:
        """Under the lock: the registration ``name`` of this kind, or a clear error."""
        slot = self._slots.get(name)
        if slot is not None and slot.kind == kind:
            return slot
        known = ", ".join(repr(s.name) for s in self._slots.values() if s.kind == kind)
        msg = f"unknown {kind} {name!r}; registered {kind}s: {known or 'none'}"
        error = UnknownEngineError if kind == _ENGINE else UnknownResourceError
        raise error(msg)

    def _bring_up(self, claim: _Claim) -> tuple[Engine, list[Event]]:
        """Outside the lock: stop the victim, start the claimed engine, take its reference."""
        slot = claim.slot
        if claim.ready:
            assert slot.engine is not None
            return slot.engine, []
        events: list[Event] = []
        try:
            if claim.victim is not None:
                events += self._stop([claim.victim], "evicted", publish=False)
            began = time.perf_counter()
            engine = _bring(slot)
            seconds = time.perf_counter() - began
        except BaseException:
            with self._cond:
                slot.state = _COLD
                self._notify()
            with contextlib.suppress(Exception):  # the start's error is the one to see
                self._publish(events)
            raise
        with self._cond:
            slot.engine = engine
            slot.state = _LIVE
            slot.refs += 1
            slot.starts += 1
            slot.last_used = self._clock()
            self._notify()
        if slot.kind == _ENGINE:
            events.append(EngineStarted(path=(), name=slot.name, seconds=seconds))
        return engine, events

    async def _abring_up(self, claim: _Claim) -> tuple[Engine, list[Event]]:
        """`_bring_up` in a worker thread; a cancelled caller gives its reference back."""
        if claim.ready:
            return self._bring_up(claim)
        task = asyncio.ensure_future(asyncio.to_thread(self._bring_up, claim))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda done: self._release_started(claim.slot, done))
            raise

    def _release_started(self, slot: _Slot, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            self._release(slot)

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            slot.refs -= 1
            slot.last_used = self._clock()
            self._notify()

    def _notify(self) -> None:
        """Under the lock: wake every waiting thread and task to claim again."""
        self._cond.notify_all()
        for loop, waiter in self._waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, waiter)
        self._waiters.clear()

    # -- stopping --------------------------------------------------------------------------

    def flush(self, force: bool = False) -> list[str]:
        """Stop the engines idle for more than ``idle_seconds`` (every idle one if ``force``).

        An engine in use is never stopped. Returns the names stopped.
        """
        with self._cond:
            now = self._clock()
            victims = [
                s
                for s in self._slots.values()
                if s.state == _LIVE
                and not s.refs
                and (force or now - (s.last_used or 0.0) > self.idle_seconds)
            ]
            for slot in victims:
                slot.state = _STOPPING
        self._stop(victims, "flush" if force else "idle")
        return [s.name for s in victims]

    def close(self) -> None:
        """Stop every live engine and release every live resource, in use or not (one
        still starting is left to its caller).

        The registrations stay: a later acquire starts an engine again.
        """
        with self._cond:
            victims = [s for s in self._slots.values() if s.state == _LIVE]
            for slot in victims:
                slot.state = _STOPPING
        self._stop(victims, "close")

    def _stop(self, slots: list[_Slot], reason: str, *, publish: bool = True) -> list[Event]:
        """Outside the lock: stop slots marked stopping; the first ``stop()`` error is raised
        once all were tried."""
        events: list[Event] = []
        error: BaseException | None = None
        for slot in slots:
            try:
                _put_down(slot)
                if slot.kind == _ENGINE:
                    events.append(EngineStopped(path=(), name=slot.name, reason=reason))
            except BaseException as exc:
                error = error or exc
            finally:
                with self._cond:
                    if slot.owned:
                        slot.engine = None  # closed: the next use builds a new one
                    slot.state = _COLD
                    self._notify()
        if publish:
            self._publish(events)
        if error is not None:
            raise error
        return events

    def __enter__(self) -> EngineBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reporting -------------------------------------------------------------------------

    def identity(self, name: str) -> dict[str, Any]:
        """The engine's ``identity()``, without starting it (a factory is built, not
        started): what an LLM node's cache key chains, so a cached rerun loads no model."""
        with self._cond:
            slot = self._slot(name, _ENGINE)
            if slot.engine is None:
                slot.engine = _build(slot)
            engine = slot.engine
        identity: dict[str, Any] = dict(engine.identity())
        return identity

    def resource_identity(self, name: str) -> str | None:
        """What the resource ``name`` adds to the cache keys of the nodes that use it
        (`resources.identity`), without building it; in a worker process, the identity
        computed where it was registered, so keys agree with the driver's."""
        with self._cond:
            slot = self._slot(name, _RESOURCE)
        return slot.identity if slot.identity is not None else resources.identity(slot.source)

    def status(self) -> dict[str, EngineStatus]:
        """Per engine and resource: live, reference count, number of starts (builds, for a
        resource), last use (by ``clock``)."""
        with self._cond:
            return {
                s.name: EngineStatus(
                    live=s.state == _LIVE, refs=s.refs, starts=s.starts, last_used=s.last_used
                )
                for s in self._slots.values()
            }

    def _publish(self, events: list[Event]) -> None:
        bus = self.bus
        if bus is not None and bus.active:
            for event in events:
                bus.publish(event)

    def __repr__(self) -> str:
        with self._cond:
            live = [s.name for s in self._slots.values() if s.state == _LIVE]
            names = [s.name for s in self._slots.values() if s.kind == _ENGINE]
            kept = [s.name for s in self._slots.values() if s.kind == _RESOURCE]
        more = f", resources={kept!r}" if kept else ""
        return f"EngineBroker({names!r}{more}, live={live!r}, max_live={self.max_live})"

    # -- pickling --------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        with self._cond:
            sources = {s.name: s.source for s in self._slots.values() if s.kind == _ENGINE}
            kept = {s.name: s.source for s in self._slots.values() if s.kind == _RESOURCE}
        for name, source in sources.items():
            if _is_engine(source):
                _check_picklable(name, source)
        for name, source in kept.items():
            if not resources.is_factory(source):
                resources.check_picklable(name, source)
        identities = {name: self.resource_identity(name) for name in kept}
        state = (sources, self.max_live, self.idle_seconds, self._clock, kept, identities)
        return (_rebuild, state)


class Lease:
    """A resource held by `EngineBroker.lease`: ``value`` stays as it is (``flush`` leaves
    it alone, a registration cannot replace it) until ``release()``, which may be called
    more than once."""

    __slots__ = ("_broker", "_slot", "value")

    def __init__(self, broker: EngineBroker, slot: _Slot, value: Any) -> None:
        self._broker = broker
        self._slot: _Slot | None = slot
        self.value = value

    def release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._broker._release(slot)

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _bring(slot: _Slot) -> Any:
    """Outside the lock: the started engine, or the resource (built by its factory)."""
    if slot.kind == _RESOURCE:
        return slot.source() if slot.owned else slot.source
    engine = slot.engine if slot.engine is not None else _build(slot)
    engine.start()
    return engine


def _put_down(slot: _Slot) -> None:
    """Outside the lock: stop an engine; close a resource the broker built."""
    if slot.kind == _ENGINE:
        assert slot.engine is not None
        slot.engine.stop()
    elif slot.owned:
        resources.close_resource(slot.engine)


def _build(slot: _Slot) -> Engine:
    engine = slot.source()
    if not (callable(getattr(engine, "start", None)) and callable(getattr(engine, "stop", None))):
        msg = f"the factory of engine {slot.name!r} returned {engine!r}, not an engine"
        raise TypeError(msg)
    return engine  # type: ignore[no-any-return]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _check_picklable(name: str, engine: object) -> None:
    """An engine object travels only if it pickles; say which one does not, and what to do."""
    error = resources.pickling_error(engine)
    if error is None:
        return
    msg = (
        f"engine {name!r} ({type(engine).__qualname__}) cannot be pickled: {error}; "
        "register a factory (a zero-argument callable that builds the engine) so each "
        "process builds its own, or give the engine a __reduce__ that rebuilds it from its "
        "constructor arguments"
    )
    raise TypeError(msg) from error


def _rebuild(
    sources: dict[str, Any],
    max_live: int,
    idle_seconds: float,
    clock: Clock,
    kept: dict[str, Any],
    identities: dict[str, str | None],
) -> EngineBroker:
    broker = EngineBroker(
        sources, resources=kept, max_live=max_live, idle_seconds=idle_seconds, clock=clock
    )
    for name, identity in identities.items():
        broker._slots[name].identity = identity
    return broker


def _stop_at_exit(slots: dict[str, _Slot], lock: threading.Condition) -> None:
    """At interpreter exit or collection: stop what is live, quietly (no bus by then)."""
    with lock:
        live = [s for s in slots.values() if s.state == _LIVE and s.engine is not None]
        for slot in live:
            slot.state = _STOPPING
    for slot in live:
        with contextlib.suppress(Exception):
            _put_down(slot)
        with lock:
            slot.state = _COLD
