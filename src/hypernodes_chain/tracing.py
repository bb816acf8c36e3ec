"""`OpenTelemetryCallback`: a run or map as OpenTelemetry spans (extra ``otel``).

Spans are built from the core's events, so they cost what the events cost: during ``map``
one span per batch and one per node per batch, not one per item. Each span takes its start
and end from the events' own ``time_ns`` stamps, made where the work ran: a batch run on a
Dask worker or in a Daft process shows when it ran there, though its events reach the
driver only when the batch comes back. The tree::

    map <graph>                      (or ``run <graph>`` for one run)
      batch                          items [start, start + n)
        node <name>                  one per node of the batch
          graph <inner>              a nested graph's run for one item
            node <inner node>
      engine start <engine>          an engine's start, and its stop

A root span is a child of whatever span is current where the run or map was called. The
callback only creates spans; the tracer provider decides where they go (console, OTLP,
memory). Spans are matched to their events by path, node, item and batch: two runs or maps
of the same graph at once through one callback may share a parent.

Events are kept as they come and turned into spans in bursts: at the end of each run or
map, and whenever 512 events have gathered or the oldest waited a second (checked as each
event comes). Since every span carries its events' times, a burst makes the same spans,
but the SDK's code runs warm instead of between a map's batches: in a map of 100,000
cheap items, that cuts the spans' cost by about a third.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ._optional import optional
from .callbacks import Callback
from .events import (
    BatchFinished,
    EngineStarted,
    EngineStopped,
    Event,
    GraphFinished,
    GraphStarted,
    InterruptEvent,
    MapFinished,
    MapStarted,
    NodeFailed,
    NodeFinished,
    NodeStarted,
)

__all__ = ["OpenTelemetryCallback"]

_Key = tuple[Any, ...]
_BURST = 512  # events kept before they are turned into spans
_WAIT_NS = 1_000_000_000  # nor are they kept longer than this


@dataclass(slots=True)
class _Open:
    """A span not ended yet. A node's span is made only when it ends (one call into the
    SDK, every attribute at once) or when a nested graph needs it as a parent, so
    ``span`` may still be None; ``failed_ns``: when its failure was reported, where the
    event that would end it may never come (the map stops on that failure)."""

    name: str
    parent: Any
    start_ns: int
    attributes: dict[str, Any]
    span: Any = None
    failed_ns: int | None = None


@dataclass(slots=True)
class _Map:
    """An open map: its span, batch size and open batch spans (by first item)."""

    span: Any
    batch_size: int
    batches: dict[int, _Open] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)  # sorted keys of ``batches``

    def containing(self, index: int) -> int | None:
        """The open batch holding item ``index``."""
        pos = bisect.bisect_right(self.starts, index) - 1
        if pos < 0 or index >= self.starts[pos] + self.batch_size:
            return None
        return self.starts[pos]


class OpenTelemetryCallback(Callback):
    """Turn a run's or map's events into OpenTelemetry spans.

    Parameters
    ----------
    tracer_provider
        The provider whose tracer makes the spans (its processors and exporters decide
        where they go); None takes the global one (``trace.set_tracer_provider``).

    Raises
    ------
    ImportError
        ``opentelemetry-api`` is not installed (``pip install 'hypernodes-chain[otel]'``).

    Attributes are ``hypernodes.*`` (graph, path, node, item index, batch start, item
    counts: cached, failed, ok) and the tokens an engine reported, as
    ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``. A failure is an
    exception event on its node's span, whose status is then ERROR. Spans are made in
    bursts (see the module's docstring); `flush` makes the ones pending now.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        self._trace = optional("opentelemetry.trace", "OpenTelemetryCallback", "otel")
        self._tracer = self._trace.get_tracer("hypernodes_chain", tracer_provider=tracer_provider)
        self._lock = threading.Lock()  # engines may report from their broker's thread
        self._open: dict[_Key, list[_Open]] = {}  # runs, graphs and nodes, by their events
        self._maps: dict[str, _Map] = {}  # open maps, by graph name
        self._graphs: dict[tuple[str, ...], str] = {}  # a path's graph (its last name is a node's)
        self._parent: Any = None  # the parent of the latest span made, and its context
        self._parent_context: Any = None
        self._context = optional("opentelemetry.context", "OpenTelemetryCallback", "otel")
        self._pending: list[tuple[Event, Any]] = []  # events not yet spans, and root contexts
        self._since = 0  # when the oldest pending event came (monotonic ns)
        self._here: Any = None  # the context current where the root being made started

    def __call__(self, event: Event) -> None:
        with self._lock:
            pending = self._pending
            now = time.monotonic_ns()
            if not pending:
                self._since = now
            root = len(event.path) == 1 and isinstance(event, (MapStarted, GraphStarted))
            pending.append((event, self._context.get_current() if root else None))
            if (
                len(pending) >= _BURST
                or now - self._since >= _WAIT_NS
                or isinstance(event, MapFinished)
                or (isinstance(event, GraphFinished) and len(event.path) == 1)
            ):
                self._flush()

    def flush(self) -> None:
        """Turn the events kept so far into spans now (the end of each run or map does)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        dispatch = super().__call__
        for event, here in pending:
            self._here = here
            dispatch(event)
        self._here = None

    # -- spans --------------------------------------------------------------------------

    def _start(self, name: str, parent: Any, start_ns: int, attributes: dict[str, Any]) -> Any:
        """A span under ``parent`` (None: under the span current where its run started)."""
        if parent is None:
            context = self._here
        elif parent is self._parent:  # a batch's nodes, one after the other
            context = self._parent_context
        else:
            context = self._parent_context = self._trace.set_span_in_context(parent)
            self._parent = parent
        attrs = {k: v for k, v in attributes.items() if v is not None}
        return self._tracer.start_span(name, context=context, attributes=attrs, start_time=start_ns)

    def _opened(self, entry: _Open) -> _Open:
        """``entry`` with its span made (under its parent, with what it knows so far)."""
        if entry.span is None:
            entry.span = self._start(entry.name, entry.parent, entry.start_ns, entry.attributes)
        return entry

    def _end(self, entry: _Open, at: int, attributes: dict[str, Any]) -> None:
        """End ``entry``'s span at ``at`` with these ``attributes`` added."""
        if entry.span is None:
            entry.attributes.update(attributes)
            entry.span = self._start(entry.name, entry.parent, entry.start_ns, entry.attributes)
        else:
            entry.span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        entry.span.end(end_time=at)

    def _push(self, key: _Key, entry: _Open) -> None:
        self._open.setdefault(key, []).append(entry)

    def _peek(self, key: _Key) -> _Open | None:
        found = self._open.get(key)
        return found[-1] if found else None

    def _pop(self, key: _Key) -> _Open | None:
        found = self._open.get(key)
        if not found:
            return None
        entry = found.pop(0)
        if not found:
            del self._open[key]
        return entry

    def _fail(self, span: Any, error: BaseException, at: int, attributes: dict[str, Any]) -> None:
        attrs = {k: v for k, v in attributes.items() if v is not None}
        span.record_exception(error, attributes=attrs, timestamp=at)
        status = self._trace.Status(self._trace.StatusCode.ERROR, _describe(error))
        span.set_status(status)

    # -- where a span goes ----------------------------------------------------------------

    def _batch(self, graph: str, start: int, at: int) -> Any:
        """The span of the map's batch starting at item ``start`` (opened at ``at``)."""
        m = self._maps[graph]
        entry = m.batches.get(start)
        if entry is None:
            attrs = {"hypernodes.graph": graph, "hypernodes.batch.start": start}
            entry = m.batches[start] = self._opened(_Open("batch", m.span, at, attrs))
            bisect.insort(m.starts, start)
        return entry.span

    def _outer_node(self, path: tuple[str, ...], index: int | None) -> Any:
        """The span of the graph node whose inner graph runs under ``path``, for item
        ``index``: its call for that item, its call for the batch holding it, or else
        the latest open call of it."""
        outer, name = path[:-1], path[-1]
        entry = self._peek(("node", outer, name, index, None))
        if entry is None and index is not None and len(outer) == 1 and outer[0] in self._maps:
            start = self._maps[outer[0]].containing(index)
            entry = self._peek(("node", outer, name, None, start))
        if entry is None:
            for key in reversed(self._open):
                if key[0] == "node" and key[1] == outer and key[2] == name:
                    entry = self._peek(key)
                    break
        return None if entry is None else self._opened(entry).span

    def _node_parent(self, event: NodeStarted) -> Any:
        path = event.path
        if event.batch is not None and len(path) == 1 and path[0] in self._maps:
            return self._batch(path[0], event.batch, event.time_ns)
        entry = self._peek(("graph", path, event.index))
        if entry is not None:
            return entry.span
        return self._outer_node(path, event.index) if len(path) > 1 else None

    def _innermost_root(self) -> Any:
        """The latest open map or run, for what belongs to neither a node nor a batch."""
        for key in reversed(self._open):
            if key[0] == "graph" and len(key[1]) == 1:
                return self._open[key][-1].span
        if self._maps:
            return next(reversed(self._maps.values())).span
        return None

    # -- runs and nested graphs ------------------------------------------------------------

    def on_graph_started(self, event: GraphStarted) -> None:
        path = event.path
        nested = len(path) > 1
        parent = self._outer_node(path, event.index) if nested else None
        attrs = {
            "hypernodes.graph": event.graph,
            "hypernodes.path": "/".join(path) if nested else None,
            "hypernodes.item.index": event.index,
        }
        self._graphs[path] = event.graph
        name = f"graph {event.graph}" if nested else f"run {event.graph}"
        entry = self._opened(_Open(name, parent, event.time_ns, attrs))
        self._push(("graph", path, event.index), entry)

    def on_graph_finished(self, event: GraphFinished) -> None:
        entry = self._pop(("graph", event.path, event.index))
        if entry is None:
            return
        if event.error is not None:
            status = self._trace.Status(self._trace.StatusCode.ERROR, _describe(event.error))
            entry.span.set_status(status)
        entry.span.end(end_time=event.time_ns)
        if len(event.path) == 1 and not self._peek(("graph", event.path, event.index)):
            self._close_under(event.path[0], event.time_ns)

    # -- nodes --------------------------------------------------------------------------

    def on_node_started(self, event: NodeStarted) -> None:
        path = event.path
        attrs = {
            "hypernodes.graph": self._graphs.get(path, path[-1]),
            "hypernodes.path": "/".join(path) if len(path) > 1 else None,
            "hypernodes.node": event.node,
            "hypernodes.item.index": event.index,
            "hypernodes.batch.start": event.batch,
        }
        entry = _Open(f"node {event.node}", self._node_parent(event), event.time_ns, attrs)
        self._push(("node", path, event.node, event.index, event.batch), entry)

    def on_node_finished(self, event: NodeFinished) -> None:
        entry = self._pop(("node", event.path, event.node, event.index, event.batch))
        if entry is None:
            return
        if event.batch is None:
            attrs: dict[str, Any] = {"hypernodes.cached": event.cached}
        else:
            attrs = {
                "hypernodes.items": event.n_items,
                "hypernodes.items.cached": event.n_cached,
                "hypernodes.items.failed": event.n_failed,
            }
        if event.prompt_tokens:
            attrs["gen_ai.usage.input_tokens"] = event.prompt_tokens
        if event.completion_tokens:
            attrs["gen_ai.usage.output_tokens"] = event.completion_tokens
        self._end(entry, event.time_ns, attrs)

    def on_node_failed(self, event: NodeFailed) -> None:
        in_batch = event.batch is not None
        key = ("node", event.path, event.node, None if in_batch else event.index, event.batch)
        attrs = {"hypernodes.item.index": event.index, "hypernodes.items.failed": event.n_items}
        if in_batch:  # its NodeFinished follows, unless the map stops here
            entry = self._peek(key)
            if entry is not None:
                entry.failed_ns = event.time_ns
                self._fail(self._opened(entry).span, event.error, event.time_ns, attrs)
            return
        entry = self._pop(key)  # an item's call ends with its failure
        if entry is not None:
            self._fail(self._opened(entry).span, event.error, event.time_ns, attrs)
            entry.span.end(end_time=event.time_ns)

    def on_interrupt_event(self, event: InterruptEvent) -> None:
        entry = self._peek(("node", event.path, event.node, event.index, None))
        if entry is not None:
            attrs = {"hypernodes.interrupt.name": event.name, "hypernodes.interrupt.id": event.id}
            span = self._opened(entry).span
            span.add_event("interrupt", attributes=attrs, timestamp=event.time_ns)

    # -- maps and batches -----------------------------------------------------------------

    def on_map_started(self, event: MapStarted) -> None:
        attrs = {
            "hypernodes.graph": event.graph,
            "hypernodes.map.total": event.total,
            "hypernodes.map.batch_size": event.batch_size,
            "hypernodes.items.skipped": event.n_skipped,
        }
        span = self._start(f"map {event.graph}", None, event.time_ns, attrs)
        self._maps[event.graph] = _Map(span, max(event.batch_size, 1))

    def on_batch_finished(self, event: BatchFinished) -> None:
        m = self._maps.get(event.graph)
        if m is None:
            return
        attrs = {
            "hypernodes.batch.start": event.start,
            "hypernodes.items": event.n_items,
            "hypernodes.items.failed": event.n_failed,
            "hypernodes.batch.write_seconds": event.write_seconds or None,
            "hypernodes.batch.cache_seconds": event.cache_seconds or None,
        }
        # batches are reported in input order: the first open one from ``start`` on is this
        # one (its first item may lie past ``start`` where a resumed map skipped some)
        pos = bisect.bisect_left(m.starts, event.start)
        if pos < len(m.starts) and m.starts[pos] < event.start + m.batch_size:
            entry = m.batches.pop(m.starts.pop(pos))
        else:  # nothing ran: every item was stored by an earlier run
            entry = _Open("batch", m.span, event.time_ns, {"hypernodes.graph": event.graph})
        self._end(entry, event.time_ns, attrs)

    def on_map_finished(self, event: MapFinished) -> None:
        m = self._maps.get(event.graph)
        if m is None:
            return
        self._close_under(event.graph, event.time_ns)
        for entry in m.batches.values():
            entry.span.end(end_time=event.time_ns)
        del self._maps[event.graph]
        span = m.span
        span.set_attributes({
            "hypernodes.items": event.n_items,
            "hypernodes.items.ok": event.n_ok,
            "hypernodes.items.failed": event.n_failed,
        })  # fmt: skip
        if event.error is not None:
            self._fail(span, event.error, event.time_ns, {})
        span.end(end_time=event.time_ns)

    def _close_under(self, graph: str, at: int) -> None:
        """End the spans left open under ``graph`` (a map or run stopped by an error): a
        failed one when it failed, the others ``at``."""
        for key in [k for k in self._open if k[1][0] == graph]:
            for entry in self._open.pop(key):
                failed = entry.failed_ns
                self._end(entry, at if failed is None else min(failed, at), {})

    # -- engines --------------------------------------------------------------------------

    def on_engine_started(self, event: EngineStarted) -> None:
        start = event.time_ns - int(event.seconds * 1e9)
        attrs = {"hypernodes.engine": event.name}
        span = self._start(f"engine start {event.name}", self._innermost_root(), start, attrs)
        span.end(end_time=event.time_ns)

    def on_engine_stopped(self, event: EngineStopped) -> None:
        attrs = {"hypernodes.engine": event.name, "hypernodes.engine.reason": event.reason}
        parent = self._innermost_root()
        span = self._start(f"engine stop {event.name}", parent, event.time_ns, attrs)
        span.end(end_time=event.time_ns)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
