"""Event records and the tiny bus that carries them from the core to subscribers.

Events are frozen dataclasses. The core builds one only when the bus has a subscriber
(`EventBus.active`), so an unobserved run pays nothing for them. During ``map`` node
events are per batch: ``n_items`` says how many items the event covers.

A subscriber that raises (an ``Exception``) stops the run with a `CallbackError` naming it
and the event, its exception chained; ``KeyboardInterrupt`` and ``SystemExit`` pass as
they are. It is never an item failure, not even when it was raised inside a node's code
(a `StreamingChunkEvent`, an `InterruptEvent`) and the node's error handling caught it.

Every event is stamped with the wall-clock time it was made (``time_ns``) where it was
made: on a Dask worker or in a Daft process for the work done there, so an observer on the
driver (`tracing.OpenTelemetryCallback`) sees when the work happened, not when it came back.
"""

from __future__ import annotations

import reprlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .exceptions import CallbackError

__all__ = [
    "BatchFinished",
    "EngineStarted",
    "EngineStopped",
    "Event",
    "EventBus",
    "GraphFinished",
    "GraphStarted",
    "InterruptEvent",
    "MapFinished",
    "MapStarted",
    "NodeFailed",
    "NodeFinished",
    "NodeStarted",
    "StreamingChunkEvent",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: ``path`` holds the names of the enclosing graphs; ``time_ns``
    when the event was made (ns since the epoch, by the clock of the process that made it)."""

    path: tuple[str, ...]
    time_ns: int = field(default_factory=time.time_ns, kw_only=True, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class GraphStarted(Event):
    graph: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    index: int | None = None
    graph_obj: Any = field(default=None, repr=False, compare=False)  # the Graph, for displays


@dataclass(frozen=True, slots=True)
class GraphFinished(Event):
    graph: str
    duration: float
    index: int | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class NodeStarted(Event):
    node: str
    index: int | None = None  # the item (None for a whole batch)
    n_items: int = 1
    batch: int | None = None  # a batch's event: the index of the batch's first item


@dataclass(frozen=True, slots=True)
class NodeFinished(Event):
    """A node finished: for one item, or for ``n_items`` items of a map's batch. A node
    that calls an engine adds the tokens its prompts and replies took, where the engine
    tells them (0 where it does not)."""

    node: str
    duration: float
    cached: bool
    index: int | None = None
    n_items: int = 1
    n_cached: int = 0
    n_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch: int | None = None  # a batch's event: the index of the batch's first item


@dataclass(frozen=True, slots=True)
class NodeFailed(Event):
    """A node failed: for one item of a run, or for ``n_items`` items of a map's batch
    (``error`` and ``index`` are the first one's; every record is in the map's results)."""

    node: str
    error: BaseException
    index: int | None = None
    n_items: int = 1
    batch: int | None = None  # a batch's event: the index of the batch's first item


@dataclass(frozen=True, slots=True)
class StreamingChunkEvent(Event):
    node: str
    chunk: Any
    index: int | None = None


@dataclass(frozen=True, slots=True)
class InterruptEvent(Event):
    id: str
    name: str
    value: Any
    node: str
    index: int | None = None


@dataclass(frozen=True, slots=True)
class MapStarted(Event):
    graph: str
    total: int | None
    batch_size: int
    graph_obj: Any = field(default=None, repr=False, compare=False)  # the Graph, for displays
    n_skipped: int = 0  # items a resumed map finds stored already (of ``total``)


@dataclass(frozen=True, slots=True)
class BatchFinished(Event):
    graph: str
    start: int  # index of the batch's first item
    n_items: int
    n_failed: int
    n_done: int  # items finished so far in this map
    write_seconds: float = 0.0  # handing the batch to the writer
    cache_seconds: float = 0.0  # the batch's cache look-ups and stores


@dataclass(frozen=True, slots=True)
class MapFinished(Event):
    graph: str
    n_items: int
    n_ok: int
    n_failed: int
    duration: float
    error: BaseException | None = None  # set when the map stopped on an error


@dataclass(frozen=True, slots=True)
class EngineStarted(Event):
    name: str  # the engine's name in its broker
    seconds: float  # how long the start (the model load) took


@dataclass(frozen=True, slots=True)
class EngineStopped(Event):
    name: str
    reason: str  # "evicted", "idle", "flush", "close" or "replaced"


Subscriber = Callable[[Event], Any]


class EventBus:
    """Publishes events to subscribers in subscription order.

    When a subscriber raises, the others still get the event, then `publish` raises a
    `CallbackError`. The bus stays failed: every later `publish` delivers its event and
    raises that same error again, so the run stops even where the first raise was caught
    (in a node's code, which turns errors into item failures).
    """

    __slots__ = ("active", "error", "subscribers")

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self.subscribers: list[Subscriber] = list(subscribers)
        self.active = bool(self.subscribers)
        self.error: CallbackError | None = None  # set once a subscriber has raised

    def publish(self, event: Event) -> None:
        if self.error is not None:
            self._deliver_failed(event, iter(self.subscribers), self.error, again=True)
            return
        subscribers = iter(self.subscribers)
        try:
            for subscriber in subscribers:
                subscriber(event)
        except Exception as exc:  # the slow path; a try costs nothing while nothing raises
            error = CallbackError(_describe(subscriber, event, exc))
            error.__cause__ = exc
            self.error = error
            self._deliver_failed(event, subscribers, error)

    @staticmethod
    def _deliver_failed(
        event: Event, rest: Iterator[Subscriber], error: CallbackError, again: bool = False
    ) -> None:
        """Hand ``event`` to the ``rest`` of the subscribers, then raise ``error``.

        The run is already stopping on ``error``, so further failures are not raised; nor is
        ``error`` raised ``again`` where it is the exception being handled (the events that
        report the end of the run, published on the way out).
        """
        for subscriber in rest:
            try:
                subscriber(event)
            except Exception:
                pass
        if not again or sys.exc_info()[1] is not error:
            raise error


def _describe(subscriber: Subscriber, event: Event, exc: BaseException) -> str:
    """``callback Boom raised ValueError: boom on NodeFinished (node 'a', graph 'g')``."""
    text = str(exc)
    raised = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    details = []
    node = getattr(event, "node", None)
    if node is not None:
        details.append(f"node {node!r}")
    graph = getattr(event, "graph", None)
    if graph is None and event.path:
        graph = event.path[-1]
    if graph is not None:
        details.append(f"graph {graph!r}")
    if len(event.path) > 1:
        details.append(f"path {'/'.join(event.path)}")
    index = getattr(event, "index", None)
    if index is not None:
        details.append(f"item {index}")
    if isinstance(event, BatchFinished):
        details.append(f"batch start {event.start}")
    where = f" ({', '.join(details)})" if details else ""
    return f"callback {_name(subscriber)} raised {raised} on {type(event).__name__}{where}"


def _name(subscriber: Subscriber) -> str:
    """A function's or method's qualified name, else the object's own repr, else its class."""
    qualname = getattr(subscriber, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    cls = type(subscriber)
    own_repr: object = cls.__repr__
    if own_repr is object.__repr__:  # the default <... object at 0x...> says no more
        return cls.__qualname__
    try:
        return reprlib.repr(subscriber)
    except Exception:
        return cls.__qualname__
