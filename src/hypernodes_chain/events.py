"""Event records and the tiny bus that carries them from the core to subscribers.

Events are frozen dataclasses. The core builds one only when the bus has a subscriber
(`EventBus.active`), so an unobserved run pays nothing for them. During ``map`` node
events are per batch: ``n_items`` says how many items the event covers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BatchFinished",
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
    """Base of every event: ``path`` holds the names of the enclosing graphs."""

    path: tuple[str, ...]


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


@dataclass(frozen=True, slots=True)
class NodeFinished(Event):
    node: str
    duration: float
    cached: bool
    index: int | None = None
    n_items: int = 1
    n_cached: int = 0
    n_failed: int = 0


@dataclass(frozen=True, slots=True)
class NodeFailed(Event):
    node: str
    error: BaseException
    index: int | None = None


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


@dataclass(frozen=True, slots=True)
class BatchFinished(Event):
    graph: str
    start: int  # index of the batch's first item
    n_items: int
    n_failed: int
    n_done: int  # items finished so far in this map


@dataclass(frozen=True, slots=True)
class MapFinished(Event):
    graph: str
    n_items: int
    n_ok: int
    n_failed: int
    duration: float
    error: BaseException | None = None  # set when the map stopped on an error


Subscriber = Callable[[Event], Any]


class EventBus:
    """Publishes events to subscribers in subscription order."""

    __slots__ = ("active", "subscribers")

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self.subscribers: list[Subscriber] = list(subscribers)
        self.active = bool(self.subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)
        self.active = True

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.remove(subscriber)
        self.active = bool(self.subscribers)

    def publish(self, event: Event) -> None:
        for subscriber in self.subscribers:
            subscriber(event)
