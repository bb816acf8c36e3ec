"""What travels to a Dask worker (or a Daft UDF) and what runs there: batch tasks and single
node calls.

The driver packs, the worker unpacks and runs the core's own flows with the sync driver,
and packs the outcome back. Everything goes as cloudpickle bytes, so a batch's columns
travel as a few buffers (Dask would otherwise walk every element of a list argument) and a
value that cannot be pickled is a clear error naming the node, the input or the item.

- `pack_shared`: what every batch of one map shares (the plan as graph and names, the
  constants, the settings, the driver's node fingerprints). Packed once per map part by a
  driver's `SharedParts`; a worker unpacks it once per map (`unpack_shared`, kept in
  `_SHARED`) and seeds the fingerprints, so cache keys equal the driver's even where
  cloudpickle rebuilt a function without its source.
- `pack_batch` / `reply_batch` / `unpack_reply`: one `BatchTask` there and back, with the
  events it raised (a `Recorder` keeps them there; `publish` puts them on the driver's bus
  on arrival).
- `pack_call` / `run_call` / `unpack_call`: one `ItemCall` of ``run`` (or `ColumnCall` of
  a nested graph's rows) there and back.
- `pack_error` / `unpack_error`: an exception as data, its cause kept (``_unsent``).
- Engines: a broker travels as a `_BrokerHandle`; each worker process keeps one broker per
  handle token (`_BROKERS`), so engines start once per process, not once per batch, and
  `close_brokers` stops them when the worker closes (``_dask_plugin``).

Whatever fails where the work runs goes back as data, never raised out of the task: an
error raised there would come back without its cause (Daft turns what a UDF process
raises into a bare RuntimeError), and Dask would run the task again (its ``retries`` are
for workers that died, not for errors that recur). So a reply starts with `OK` or
`FAILED`; a value that does not pickle back fails its item alone (``_unsent``), or the
batch under ``on_error="raise"``, as a node that raised would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, TypeAlias, TypeVar

from ..events import Event, EventBus
from ..exceptions import RemoteError
from ..graph import Graph
from ..plan import Plan, build_plan
from ._drive import SyncDriver, _broke
from ._flows import batch_flow
from ._keys import node_fingerprint, seed_fingerprint
from ._unsent import (
    DRIVER,
    WORKERS,
    Reply,
    cannot,
    cloudpickle,
    fail_unsent,
    fail_unsent_call,
    pack_error,
    portable_error,
    portable_event,
    portable_reply,
    unpack_error,
    why,
)
from ._work import (
    BatchOutcome,
    BatchTask,
    Broker,
    ColumnCall,
    ItemCall,
    Keys,
    Local,
    Settings,
    Work,
)

__all__ = [
    "FAILED",
    "OK",
    "Recorder",
    "RemoteError",
    "SharedParts",
    "close_brokers",
    "fail",
    "pack_batch",
    "pack_call",
    "pack_error",
    "pack_shared",
    "publish",
    "reply_batch",
    "run_batch",
    "run_call",
    "unpack_call",
    "unpack_error",
    "unpack_outcome",
    "unpack_reply",
    "unpack_shared",
]

Shared: TypeAlias = tuple[Plan, dict[str, object], "Keys | None", Settings]
"""A map's shared part, unpacked: plan, constants, their cache keys, settings."""
P = TypeVar("P")

_DRIVER = SyncDriver()
_SHARED: OrderedDict[str, Shared] = OrderedDict()
_SHARED_KEPT = 4  # maps whose shared part a worker keeps unpacked
_BROKERS: dict[str, Broker] = {}  # handle token -> this process's broker
_LOCK = threading.Lock()
_TOKENS: weakref.WeakKeyDictionary[Broker, str] = weakref.WeakKeyDictionary()
OK, FAILED = b"\x00", b"\x01"  # the first byte of a reply: an outcome follows, or an error


# -- nodes and fingerprints ----------------------------------------------------------------


def _fingerprints(graph: Graph) -> list[str | None]:
    return [node_fingerprint(node) for node in graph.walk()]


def _seed(graph: Graph, fingerprints: list[str | None]) -> None:
    """Give the worker's copies of the nodes the fingerprints the driver computed."""
    for node, fp in zip(graph.walk(), fingerprints):
        seed_fingerprint(node, fp)


# -- engines -------------------------------------------------------------------------------


class _BrokerHandle:
    """A broker on its way to the workers: its registrations and a token that names it."""

    def __init__(self, broker: Broker) -> None:
        with _LOCK:
            token = _TOKENS.get(broker)
            if token is None:
                token = _TOKENS[broker] = uuid.uuid4().hex
        self.token = token
        self.broker = broker

    def __reduce__(self) -> tuple[Callable[[str, bytes], Broker], tuple[str, bytes]]:
        return (_worker_broker, (self.token, cloudpickle().dumps(self.broker)))


def _worker_broker(token: str, blob: bytes) -> Broker:
    """This process's broker for ``token``, built from the registrations on first use."""
    with _LOCK:
        broker = _BROKERS.get(token)
        if broker is None:
            broker = _BROKERS[token] = pickle.loads(blob)
        return broker


def close_brokers() -> None:
    """Stop the engines of every broker this process built (at worker teardown)."""
    with _LOCK:
        brokers = list(_BROKERS.values())
        _BROKERS.clear()
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.close()


def _travelling(settings: Settings) -> Settings:
    if settings.engines is None:
        return settings
    return dataclasses.replace(settings, engines=_BrokerHandle(settings.engines))


# -- packing with clear errors -----------------------------------------------------------


def pack_shared(
    plan: Plan,
    constants: Mapping[str, object],
    constant_keys: Keys | None,
    settings: Settings,
    *,
    to: str = WORKERS,
) -> bytes:
    """The part of a map every batch shares; a clear error names what does not pickle
    (and where it was to go: ``to``)."""
    graph = plan.graph
    state = (
        graph,
        plan.outputs,
        tuple(sorted(plan.given)),
        constants,
        constant_keys,
        _travelling(settings),
        _fingerprints(graph) if settings.cache is not None else [],  # keys need them
    )
    try:
        return bytes(cloudpickle().dumps(state))
    except Exception as exc:
        for node in graph.walk():
            cause = why(node)
            if cause is not None:
                raise cannot(f"node {node.name!r}", cause, to) from exc
        for name, value in constants.items():
            cause = why(value)
            if cause is not None:
                raise cannot(f"input {name!r}", cause, to) from exc
        raise cannot("the map's settings (cache, engines)", exc, to) from exc


class SharedParts(Generic[P]):
    """A driver's packed map parts (`pack_shared`), each packed once: keyed by the ids of
    plan, constants and settings, whose objects it holds so that no id is reused while it
    lives. ``place`` makes the part that travels from the bytes (Dask scatters a large one
    to every worker once); ``to`` says where it goes, in errors."""

    def __init__(self, place: Callable[[bytes], P], *, to: str = WORKERS) -> None:
        self._place = place
        self._to = to
        self._parts: dict[tuple[int, int, int], tuple[str, P, tuple[object, ...]]] = {}

    def part(self, task: BatchTask) -> tuple[str, P]:
        """The token that names ``task``'s shared part, and the part as it travels."""
        key = id(task.plan), id(task.constants), id(task.settings)
        found = self._parts.get(key)
        if found is None:
            blob = pack_shared(
                task.plan, task.constants, task.constant_keys, task.settings, to=self._to
            )
            objects = (task.plan, task.constants, task.settings)
            found = self._parts[key] = (uuid.uuid4().hex, self._place(blob), objects)
        return found[0], found[1]


def _shared(token: str, blob: bytes) -> Shared:
    with _LOCK:
        found = _SHARED.get(token)
        if found is not None:
            _SHARED.move_to_end(token)
            return found
    try:
        graph, outputs, given, constants, constant_keys, settings, fps = pickle.loads(blob)
    except ModuleNotFoundError as exc:
        msg = (
            f"this worker process cannot import {exc.name!r}, where the graph's functions "
            "are defined: install that code on the workers (or define the functions in the "
            "script or notebook that runs the graph, so they travel by value)"
        )
        raise ModuleNotFoundError(msg, name=exc.name) from exc
    _seed(graph, fps)
    found = (build_plan(graph, outputs, given), constants, constant_keys, settings)
    with _LOCK:
        _SHARED[token] = found
        while len(_SHARED) > _SHARED_KEPT:
            _SHARED.popitem(last=False)
    return found


def unpack_shared(token: str, blob: bytes) -> Shared:
    """This process's copy of a map's shared part: plan, constants, their keys, settings
    (unpacked once per ``token``, fingerprints seeded)."""
    return _shared(token, blob)


def pack_batch(task: BatchTask, *, to: str = WORKERS) -> bytes:
    """A batch's own part: its columns (as lists), indices, sequence number, key columns."""
    state = (task.columns, task.indices, task.seq, task.key_columns)
    try:
        return bytes(cloudpickle().dumps(state))
    except Exception as exc:
        for name, column in task.columns.items():
            for pos, value in enumerate(column):
                cause = why(value)
                if cause is not None:
                    what = f"map input {name!r} of item {task.indices[pos]}"
                    raise cannot(what, cause, to) from exc
        raise cannot("a batch", exc, to) from exc


# -- running on the worker ---------------------------------------------------------------


class Recorder:
    """The events of work run away from the driver's bus (a Dask worker, a Daft UDF,
    Daft's threads), kept to go back with it; nothing is kept when no one listens."""

    def __init__(self, listen: bool) -> None:
        self.events: list[Event] = []
        self.bus = EventBus([self.events.append]) if listen else EventBus()
        self.live = self.bus if listen else None  # for what takes a bus only to be heard

    def run(self, task: BatchTask) -> BatchOutcome:
        """Run ``task`` with the sync driver in this thread, its events kept here."""
        local = task.local
        # a serial driver: the core may call functions itself
        task.local = Local(bus=self.bus, inline=True)
        try:
            return _DRIVER.drive(batch_flow(task))
        finally:
            task.local = local


def reply_batch(token: str, shared: bytes, blob: bytes, listen: bool) -> bytes:
    """Run one packed batch task (a Dask task, a row of Daft's UDF): `OK` + the packed
    outcome, or `FAILED` + the packed error. It never raises (see the module docstring)."""
    try:
        return OK + run_batch(token, shared, blob, listen)
    except Exception as exc:
        return FAILED + pack_error(exc)


def run_batch(token: str, shared: bytes, blob: bytes, listen: bool) -> bytes:
    """Run one batch with the core's batch flow; returns the packed outcome (raises what
    the batch raised under ``on_error="raise"``)."""
    plan, constants, constant_keys, settings = _shared(token, shared)
    columns, indices, seq, key_columns = pickle.loads(blob)
    recorder = Recorder(listen)
    task = BatchTask(
        plan,
        columns,
        constants,
        indices,
        settings,
        Local(),  # the recorder's, while it runs
        seq=seq,
        constant_keys=constant_keys,
        key_columns=key_columns,
    )
    if settings.engines is not None:  # engine starts and stops travel back with the batch
        settings.engines.bus = recorder.live
    outcome = recorder.run(task)
    # the constants the batch made go back only where they are outputs
    made = {k: v for k, v in outcome.constants.items() if k not in constants and k in plan.outputs}
    state: Reply = (
        outcome.columns, made, outcome.keys, outcome.failures, recorder.events,
        outcome.cache_seconds,
    )  # fmt: skip
    pickler = cloudpickle()
    try:
        return bytes(pickler.dumps(state))
    except Exception:
        pass
    raise_errors = settings.on_error == "raise"
    state = fail_unsent(portable_reply(state), plan, indices, raise_errors, listen)
    try:
        return bytes(pickler.dumps(state))
    except Exception as exc:
        raise cannot("a batch's results", exc, DRIVER) from None


W = TypeVar("W", bound=Work)


def publish(piece: W, bus: EventBus | None, events: list[Event]) -> W:
    """Publish on the driver's ``bus`` the events ``piece`` raised elsewhere; a callback
    that raises fails the piece (so the map stops, as under `Runner`). Returns ``piece``."""
    if events and bus is not None and bus.active:
        try:
            for event in events:
                bus.publish(event)
        except Exception as exc:
            fail(piece, exc)
    return piece


def fail(piece: Work, error: BaseException) -> None:
    """Record ``error`` on a piece whose work came back without its outcome: a task or a
    call fails with it, a column's rows each fail with it."""
    match piece:
        case BatchTask():
            piece.error = error
        case ItemCall() | ColumnCall():
            _broke(piece, error)


def unpack_reply(task: BatchTask, blob: bytes | memoryview) -> list[Event]:
    """Fill ``task.outcome`` (or ``task.error``) from a `reply_batch`; returns the events
    it raised."""
    view = memoryview(blob)
    if view[:1] == OK:
        return unpack_outcome(task, view[1:])
    task.error = unpack_error(view[1:])
    return []


def unpack_outcome(task: BatchTask, blob: bytes | memoryview) -> list[Event]:
    """Fill ``task.outcome`` from a worker's reply; returns the events it raised."""
    columns, made, keys, failures, events, cache_seconds = pickle.loads(blob)
    constants = {**task.constants, **made} if made else task.constants
    task.outcome = BatchOutcome(columns, constants, keys, failures)
    task.outcome.cache_seconds = cache_seconds
    return list(events)


# -- one node call (``run``; the rows of a nested graph's map) ---------------------------


def pack_call(call: ItemCall | ColumnCall) -> bytes:
    """One node call (one item, or the rows of a column), its arguments and settings."""
    shape: object
    match call:
        case ColumnCall():
            column, shape = True, (call.n, call.indices, call.constant)
        case ItemCall():
            column, shape = False, call.index
    state = (
        column,
        call.step,
        call.args,
        shape,
        call.path,
        call.pos,
        _travelling(call.settings) if call.settings is not None else None,
        call.bus is not None,
        node_fingerprint(call.step.node) if call.settings and call.settings.cache else None,
    )
    try:
        return bytes(cloudpickle().dumps(state))
    except Exception as exc:
        name = call.step.node.name
        cause = why(call.step)
        if cause is not None:
            raise cannot(f"node {name!r}", cause) from exc
        for param, value in zip(call.step.params, call.args):
            cause = why(value)
            if cause is not None:
                raise cannot(f"argument {param!r} of node {name!r}", cause) from exc
        raise cannot(f"the call of node {name!r}", exc) from exc


def run_call(blob: bytes) -> bytes:
    """Run one node call (a Dask task): `OK` + its outcome and events, packed (``(ok,
    value or error)`` for an item, ``(results, failed)`` for a column), or `FAILED` + the
    packed error of a call that could not run. It never raises (see the module docstring)."""
    try:
        return OK + _run_call(blob)
    except Exception as exc:
        return FAILED + pack_error(exc)


def _run_call(blob: bytes) -> bytes:
    from ._invoke import invoker_for

    column, step, args, shape, path, pos, settings, listen, fp = pickle.loads(blob)
    if fp is not None:
        seed_fingerprint(step.node, fp)
    recorder = Recorder(listen)
    live = recorder.live
    invoker = invoker_for(step)
    call: ItemCall | ColumnCall
    if column:
        n, indices, constant = shape
        call = ColumnCall(
            step, invoker, args, n, indices, path, live, constant, None, pos, settings
        )
    else:
        call = ItemCall(step, invoker, args, shape, path, live, None, pos, settings)
    _DRIVER.run(call)
    pickler = cloudpickle()
    try:
        return bytes(pickler.dumps(_call_state(call, recorder.events)))
    except Exception:
        pass
    fail_unsent_call(call)
    try:
        return bytes(pickler.dumps(_call_state(call, recorder.events, portable=True)))
    except Exception as exc:
        what = f"the result of node {step.node.name!r}"
        raise cannot(what, exc, DRIVER) from None


def _call_state(
    call: ItemCall | ColumnCall, events: list[Event], *, portable: bool = False
) -> tuple[object, object, list[Event], tuple[int, int] | None]:
    """What goes back of a node call: ``(results, failed, events, tokens)`` for a column,
    ``(ok, value or error, events, tokens)`` for an item; ``portable``: errors that pickle
    (as `RemoteError` where they do not)."""
    if portable:
        events = [portable_event(e) for e in events]
    match call:
        case ColumnCall():
            failed = call.failed
            if portable:
                failed = {pos: portable_error(e) for pos, e in failed.items()}
            return call.results, failed, events, call.tokens
        case ItemCall() if call.error is not None:
            error = portable_error(call.error) if portable else call.error
            return False, error, events, call.tokens
        case ItemCall():
            return True, call.result, events, call.tokens


def unpack_call(call: ItemCall | ColumnCall, blob: bytes) -> list[Event]:
    """Fill the call's outcome from a worker's reply (`run_call`); returns the events it
    raised."""
    view = memoryview(blob)
    if view[:1] == FAILED:
        fail(call, unpack_error(view[1:]))
        return []
    first, second, events, call.tokens = pickle.loads(view[1:])
    match call:
        case ColumnCall():
            call.results, call.failed = first, second
        case ItemCall() if first:
            call.result = second
        case ItemCall():
            call.error = second
    return list(events)
