"""What travels to a Dask worker (or a Daft UDF) and what runs there: batch tasks and single
node calls.

The driver packs, the worker unpacks and runs the core's own flows with the sync driver,
and packs the outcome back. Everything goes as cloudpickle bytes, so a batch's columns
travel as a few buffers (Dask would otherwise walk every element of a list argument) and a
value that cannot be pickled is a clear error naming the node, the input or the item.

- `Shared`: what every batch of one map shares (the plan as graph and names, the
  constants, the settings, the driver's node fingerprints). Packed once per map; a worker
  unpacks it once per map (`unpack_shared`, kept in `_SHARED`) and seeds the fingerprints,
  so cache keys equal the driver's even where cloudpickle rebuilt a function without its
  source.
- `pack_batch` / `run_batch` / `unpack_outcome`: one `BatchTask` there and back, with the
  events it raised (published on the driver's bus on arrival).
- `pack_call` / `run_call` / `unpack_call`: one `ItemCall` of ``run`` there and back.
- `pack_error` / `unpack_error`: an exception as data, its cause kept (``DaftRunner``: Daft
  turns what a UDF process raises into a bare RuntimeError).
- Engines: a broker travels as a `_BrokerHandle`; each worker process keeps one broker per
  handle token (`_BROKERS`), so engines start once per process, not once per batch, and
  `close_brokers` stops them when the worker closes (``_dask_plugin``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, cast

from ..engines._optional import optional
from ..events import Event, EventBus
from ..graph import Graph, GraphNode
from ..plan import Plan, build_plan
from ._drive import SyncDriver
from ._flows import batch_flow
from ._keys import node_fingerprint, seed_fingerprint
from ._work import BatchOutcome, BatchTask, ColumnCall, ItemCall, Local, Settings

__all__ = [
    "RemoteError",
    "close_brokers",
    "pack_batch",
    "pack_call",
    "pack_error",
    "pack_shared",
    "publish",
    "run_batch",
    "run_call",
    "unpack_call",
    "unpack_error",
    "unpack_outcome",
    "unpack_shared",
]

_DRIVER = SyncDriver()
_SHARED: OrderedDict[str, tuple[Plan, dict[str, Any], Any, Settings]] = OrderedDict()
_SHARED_KEPT = 4  # maps whose shared part a worker keeps unpacked
_BROKERS: dict[str, Any] = {}  # handle token -> this process's broker
_LOCK = threading.Lock()
_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


class RemoteError(RuntimeError):
    """An exception raised on a worker that could not be pickled back: its type, message
    and traceback as text."""


def _cloudpickle() -> Any:
    return optional("cloudpickle", "DaskRunner", "dask")


# -- nodes and fingerprints ----------------------------------------------------------------


def _walk(graph: Graph) -> Iterator[Any]:
    """Every node of ``graph``, nested graphs' nodes included, in a fixed order."""
    for node in graph.nodes:
        yield node
        if isinstance(node, GraphNode):
            yield from _walk(node.graph)


def _fingerprints(graph: Graph) -> list[str | None]:
    return [node_fingerprint(node) for node in _walk(graph)]


def _seed(graph: Graph, fingerprints: list[str | None]) -> None:
    """Give the worker's copies of the nodes the fingerprints the driver computed."""
    for node, fp in zip(_walk(graph), fingerprints):
        seed_fingerprint(node, fp)


# -- engines -------------------------------------------------------------------------------


class _BrokerHandle:
    """A broker on its way to the workers: its registrations and a token that names it."""

    def __init__(self, broker: Any) -> None:
        with _LOCK:
            token = _TOKENS.get(broker)
            if token is None:
                token = _TOKENS[broker] = uuid.uuid4().hex
        self.token = token
        self.broker = broker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_worker_broker, (self.token, _cloudpickle().dumps(self.broker)))


def _worker_broker(token: str, blob: bytes) -> Any:
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


def _why(obj: Any) -> BaseException | None:
    try:
        _cloudpickle().dumps(obj)
    except Exception as exc:
        return exc
    return None


def _cannot(what: str, exc: BaseException, to: str = "the Dask workers") -> TypeError:
    error = TypeError(f"{what} cannot be pickled to send it to {to}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def pack_shared(
    plan: Plan,
    constants: dict[str, Any],
    constant_keys: Any,
    settings: Settings,
    *,
    to: str = "the Dask workers",
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
        return bytes(_cloudpickle().dumps(state))
    except Exception as exc:
        for node in _walk(graph):
            cause = _why(node)
            if cause is not None:
                raise _cannot(f"node {node.name!r}", cause, to) from exc
        for name, value in constants.items():
            cause = _why(value)
            if cause is not None:
                raise _cannot(f"input {name!r}", cause, to) from exc
        raise _cannot("the map's settings (cache, engines)", exc, to) from exc


def _shared(token: str, blob: bytes) -> tuple[Plan, dict[str, Any], Any, Settings]:
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


def unpack_shared(token: str, blob: bytes) -> tuple[Plan, dict[str, Any], Any, Settings]:
    """This process's copy of a map's shared part: plan, constants, their keys, settings
    (unpacked once per ``token``, fingerprints seeded)."""
    return _shared(token, blob)


def pack_batch(task: BatchTask, *, to: str = "the Dask workers") -> bytes:
    """A batch's own part: its columns (as lists), indices, sequence number, key columns."""
    state = (task.columns, task.indices, task.seq, task.key_columns)
    try:
        return bytes(_cloudpickle().dumps(state))
    except Exception as exc:
        for name, column in task.columns.items():
            for pos, value in enumerate(column):
                cause = _why(value)
                if cause is not None:
                    what = f"map input {name!r} of item {task.indices[pos]}"
                    raise _cannot(what, cause, to) from exc
        raise _cannot("a batch", exc, to) from exc


# -- running on the worker ---------------------------------------------------------------


def _recorder(listen: bool) -> tuple[EventBus, list[Event]]:
    events: list[Event] = []
    return (EventBus([events.append]) if listen else EventBus()), events


def run_batch(token: str, shared: bytes, blob: bytes, listen: bool) -> bytes:
    """Run one batch with the core's batch flow (a Dask task); returns the packed outcome."""
    plan, constants, constant_keys, settings = _shared(token, shared)
    columns, indices, seq, key_columns = pickle.loads(blob)
    bus, events = _recorder(listen)
    task = BatchTask(
        plan,
        columns,
        constants,
        indices,
        settings,
        Local(bus=bus, inline=True),  # a serial driver: the core may call functions itself
        seq=seq,
        constant_keys=constant_keys,
        key_columns=key_columns,
    )
    if settings.engines is not None:  # engine starts and stops travel back with the batch
        settings.engines.bus = bus if listen else None
    outcome: BatchOutcome = _DRIVER.drive(batch_flow(task))
    made = {k: v for k, v in outcome.constants.items() if k not in constants}
    state = (outcome.columns, made, outcome.keys, outcome.failures, events, outcome.cache_seconds)
    return _pack_back(state, plan, lambda: _portable_state(state))


def _pack_back(state: Any, plan: Plan, portable: Any) -> bytes:
    """Pickle what goes back; errors that do not pickle go as `RemoteError`; an output
    value that does not pickle is a clear error naming its node."""
    cloudpickle = _cloudpickle()
    try:
        return bytes(cloudpickle.dumps(state))
    except Exception:
        pass
    state = portable()
    try:
        return bytes(cloudpickle.dumps(state))
    except Exception as exc:
        columns = state[0] if isinstance(state, tuple) and isinstance(state[0], dict) else {}
        for name, column in columns.items():
            cause = _why(column)
            if cause is not None:
                node = next((s.node.name for s in plan.steps if name in s.node.outputs), name)
                what = f"output {name!r} of node {node!r}"
                raise _cannot(what, cause, "the driver").with_traceback(None) from None
        raise _cannot("a batch's results", exc, "the driver") from None


def _portable_error(error: BaseException) -> BaseException:
    if _why(error) is None:
        return error
    import traceback

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return RemoteError(f"{type(error).__qualname__}: {error}\n{text}")


def _portable_state(state: tuple[Any, ...]) -> tuple[Any, ...]:
    columns, made, keys, failures, events, cache_seconds = state
    failures = {
        pos: dataclasses.replace(f, error=_portable_error(f.error)) for pos, f in failures.items()
    }
    events = [_portable_event(e) for e in events]
    return columns, made, keys, failures, events, cache_seconds


def _portable_event(event: Event) -> Event:
    error = getattr(event, "error", None)
    if error is None:
        return event
    return dataclasses.replace(event, error=_portable_error(error))  # type: ignore[call-arg]


def pack_error(error: BaseException) -> bytes:
    """An exception and its ``__cause__`` as bytes (pickling keeps neither the cause nor
    the traceback); one that does not pickle travels as `RemoteError`."""
    cause = error.__cause__
    state = (_portable_error(error), None if cause is None else _portable_error(cause))
    return bytes(_cloudpickle().dumps(state))


def unpack_error(blob: bytes) -> BaseException:
    """The exception `pack_error` packed, its cause chained again."""
    error, cause = pickle.loads(blob)
    if cause is not None:
        error.__cause__ = cause
    return cast(BaseException, error)


def publish(piece: Any, bus: EventBus | None, events: list[Event]) -> Any:
    """Publish on the driver's ``bus`` the events ``piece`` raised elsewhere; a callback
    that raises fails the piece (so the map stops, as under `Runner`). Returns ``piece``."""
    if events and bus is not None and bus.active:
        try:
            for event in events:
                bus.publish(event)
        except Exception as exc:
            piece.error = exc
    return piece


def unpack_outcome(task: BatchTask, blob: bytes) -> list[Event]:
    """Fill ``task.outcome`` from a worker's reply; returns the events it raised."""
    columns, made, keys, failures, events, cache_seconds = pickle.loads(blob)
    constants = {**task.constants, **made} if made else task.constants
    task.outcome = BatchOutcome(columns, constants, keys, failures)
    task.outcome.cache_seconds = cache_seconds
    return list(events)


# -- one node call (``run``; the rows of a nested graph's map) ---------------------------


def pack_call(call: ItemCall | ColumnCall) -> bytes:
    """One node call (one item, or the rows of a column), its arguments and settings."""
    column = type(call) is ColumnCall
    shape = (call.n, call.indices, call.constant) if column else call.index  # type: ignore[union-attr]
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
        return bytes(_cloudpickle().dumps(state))
    except Exception as exc:
        name = call.step.node.name
        cause = _why(call.step)
        if cause is not None:
            raise _cannot(f"node {name!r}", cause) from exc
        for param, value in zip(call.step.params, call.args):
            cause = _why(value)
            if cause is not None:
                raise _cannot(f"argument {param!r} of node {name!r}", cause) from exc
        raise _cannot(f"the call of node {name!r}", exc) from exc


def run_call(blob: bytes) -> bytes:
    """Run one node call (a Dask task); returns its outcome and events, packed: ``(ok,
    value or error)`` for an item, ``(results, failed)`` for a column."""
    from ._invoke import invoker_for

    column, step, args, shape, path, pos, settings, listen, fp = pickle.loads(blob)
    if fp is not None:
        seed_fingerprint(step.node, fp)
    bus, events = _recorder(listen)
    live = bus if listen else None
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
    state: tuple[Any, ...]
    if isinstance(call, ColumnCall):
        state = (call.results, call.failed, events)
    elif call.error is not None:
        state = (False, call.error, events)
    else:
        state = (True, call.result, events)

    def portable() -> tuple[Any, ...]:
        first, second, evs = state
        second = cast(Any, second)
        if column:
            second = {pos: _portable_error(e) for pos, e in second.items()}
        elif not first:
            second = _portable_error(second)
        return first, second, [_portable_event(e) for e in evs]

    try:
        return bytes(_cloudpickle().dumps(state))
    except Exception:
        pass
    try:
        return bytes(_cloudpickle().dumps(portable()))
    except Exception as exc:
        what = f"the result of node {step.node.name!r}"
        raise _cannot(what, exc, "the driver").with_traceback(None) from None


def unpack_call(call: ItemCall | ColumnCall, blob: bytes) -> list[Event]:
    """Fill the call's outcome from a worker's reply; returns the events it raised."""
    first, second, events = pickle.loads(blob)
    if type(call) is ColumnCall:
        call.results, call.failed = first, second
    elif first:
        call.result = second  # type: ignore[union-attr]
    else:
        call.error = second  # type: ignore[union-attr]
    return list(events)
