"""OpenTelemetry spans from a run's events, checked with the real SDK.

The spans go to the SDK's in-memory exporter (or, once, over OTLP/HTTP to a loopback
receiver that decodes the protobuf): their tree, names, attributes, parent links and
times, under `Runner`, `AsyncRunner`, `DaskRunner` (a real LocalCluster) and `DaftRunner`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from hypernodes_chain import AsyncRunner, Graph, NodeError, Runner, node
from hypernodes_chain.llm import llm_node
from hypernodes_chain.tracing import OpenTelemetryCallback
from support.scripted_engine import CountingEngine


@node(output_name="a")
def add_one(x: int) -> int:
    return x + 1


@node(output_name="b")
def double(a: int) -> int:
    return a * 2


@node(output_name="c")
def minus_three(b: int) -> int:
    return b - 3


CHAIN = Graph([add_one, double, minus_three], name="chain")
INNER = Graph([double], name="inner")
OUTER = Graph([add_one, INNER.as_node(name="inner_node")], name="outer")


class Counting(SpanProcessor):
    """Counts the spans started and ended: every span started must end."""

    def __init__(self) -> None:
        self.started = self.ended = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


class Traced:
    """A tracer provider with an in-memory exporter, and the callback that feeds it."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.counting = Counting()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.provider.add_span_processor(self.counting)
        self.callback = OpenTelemetryCallback(tracer_provider=self.provider)

    @property
    def spans(self) -> list[ReadableSpan]:
        assert self.counting.started == self.counting.ended, "a span was left open"
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def traced() -> Traced:
    return Traced()


def sync(value: Any) -> Any:
    return asyncio.run(value) if asyncio.iscoroutine(value) else value


RUNNERS = pytest.mark.parametrize("make", [Runner, AsyncRunner], ids=["Runner", "AsyncRunner"])


# -- reading spans ----------------------------------------------------------------------------


def _order(span: ReadableSpan) -> tuple[Any, ...]:
    attrs = span.attributes or {}
    return (attrs.get("hypernodes.batch.start", -1), attrs.get("hypernodes.item.index", -1),
            span.name)  # fmt: skip


def tree(spans: Sequence[ReadableSpan]) -> list[str]:
    """The span tree as indented names, siblings by batch, item, then name."""
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        parent = s.parent.span_id if s.parent is not None else None
        children[parent if parent in ids else None].append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(children[parent], key=_order):
            lines.append("  " * depth + s.name)
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return lines


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, span.name
    return next(s for s in spans if s.context.span_id == span.parent.span_id)


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=_order)


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def within(inner: ReadableSpan, outer: ReadableSpan) -> bool:
    assert None not in (inner.start_time, inner.end_time, outer.start_time, outer.end_time)
    return outer.start_time <= inner.start_time <= inner.end_time <= outer.end_time  # type: ignore[operator]


BATCH = ["  batch", "    node add_one", "    node double", "    node minus_three"]


# -- maps and runs ----------------------------------------------------------------------------


@RUNNERS
def test_a_map_is_one_span_per_batch_and_one_per_node_of_each_batch(
    make: Any, traced: Traced
) -> None:
    runner = make(callbacks=[traced.callback])
    out = sync(runner.map(CHAIN, {"x": range(5)}, map_over="x", batch_size=2))
    assert [r["c"] for r in out] == [2 * (x + 1) - 3 for x in range(5)]
    spans = traced.spans
    assert tree(spans) == ["map chain", *BATCH * 3]
    (root,) = named(spans, "map chain")
    assert root.parent is None
    assert {k: attrs(root)[k] for k in ("hypernodes.graph", "hypernodes.map.total",
            "hypernodes.map.batch_size", "hypernodes.items", "hypernodes.items.ok",
            "hypernodes.items.failed")} == {"hypernodes.graph": "chain",
            "hypernodes.map.total": 5, "hypernodes.map.batch_size": 2, "hypernodes.items": 5,
            "hypernodes.items.ok": 5, "hypernodes.items.failed": 0}  # fmt: skip
    batches = named(spans, "batch")
    assert [(attrs(b)["hypernodes.batch.start"], attrs(b)["hypernodes.items"]) for b in batches] == [
        (0, 2), (2, 2), (4, 1)]  # fmt: skip
    assert all(parent_of(b, spans) is root and within(b, root) for b in batches)
    nodes = [s for s in spans if s.name.startswith("node ")]
    assert len(nodes) == 9
    for n in nodes:
        batch = parent_of(n, spans)
        assert attrs(n)["hypernodes.batch.start"] == attrs(batch)["hypernodes.batch.start"]
        assert attrs(n)["hypernodes.items"] == attrs(batch)["hypernodes.items"]
        assert attrs(n)["hypernodes.items.cached"] == attrs(n)["hypernodes.items.failed"] == 0
        assert attrs(n)["hypernodes.graph"] == "chain" and within(n, batch)
    assert len({s.context.trace_id for s in spans}) == 1


@RUNNERS
def test_a_run_with_a_nested_graph_nests_its_spans(make: Any, traced: Traced) -> None:
    out = sync(make(callbacks=[traced.callback]).run(OUTER, {"x": 1}))
    assert out == {"a": 2, "b": 4}
    spans = traced.spans
    assert tree(spans) == [
        "run outer",
        "  node add_one",
        "  node inner_node",
        "    graph inner",
        "      node double",
    ]
    (graph,) = named(spans, "graph inner")
    assert attrs(graph)["hypernodes.path"] == "outer/inner_node"
    (inner_double,) = named(spans, "node double")
    assert attrs(inner_double)["hypernodes.graph"] == "inner"
    assert attrs(inner_double)["hypernodes.path"] == "outer/inner_node"
    assert within(inner_double, graph) and within(graph, parent_of(graph, spans))


@RUNNERS
def test_a_nested_graph_in_a_map_hangs_under_the_batch_of_its_item(
    make: Any, traced: Traced
) -> None:
    sync(make(callbacks=[traced.callback]).map(OUTER, {"x": [1, 2, 3]}, map_over="x",
                                               batch_size=2))  # fmt: skip
    spans = traced.spans
    item = ["      graph inner", "        node double"]
    assert tree(spans) == [
        "map outer",
        *["  batch", "    node add_one", "    node inner_node", *item, *item],
        *["  batch", "    node add_one", "    node inner_node", *item],
    ]
    for graph in named(spans, "graph inner"):
        outer_node = parent_of(graph, spans)
        batch = parent_of(outer_node, spans)
        start = attrs(batch)["hypernodes.batch.start"]
        assert (
            start
            <= attrs(graph)["hypernodes.item.index"]
            < start + attrs(batch)["hypernodes.items"]
        )


def test_the_root_span_is_a_child_of_the_span_current_where_the_map_is_called(
    traced: Traced,
) -> None:
    tracer = traced.provider.get_tracer("test")
    with tracer.start_as_current_span("job"):
        Runner(callbacks=[traced.callback]).map(CHAIN, {"x": [1]}, map_over="x")
    spans = traced.spans
    assert tree(spans) == ["job", "  map chain", *["  " + line for line in BATCH]]


def test_a_long_map_exports_its_spans_while_it_runs(traced: Traced) -> None:
    seen: dict[int, int] = {}

    @node(output_name="y")
    def look(x: int) -> int:
        if x == 10:
            traced.callback.flush()
        if x in (10, 999):
            seen[x] = len(traced.exporter.get_finished_spans())
        return x

    runner = Runner(callbacks=[traced.callback])
    runner.map(Graph([look], name="long"), {"x": range(1000)}, map_over="x", batch_size=2)
    assert seen[10] > 0  # flushed by hand, a few batches in
    assert seen[999] > 2 * 100  # 1,500 events: made into spans in bursts as they came
    assert len(traced.spans) == 1 + 2 * 500


# -- failures ---------------------------------------------------------------------------------


@node(output_name="checked")
def check(a: int) -> int:
    if a == 3:
        raise ValueError(f"a is {a}")
    return a


FAILING = Graph([add_one, check], name="failing")


def _exception(span: ReadableSpan) -> Mapping[str, Any]:
    (event,) = [e for e in span.events if e.name == "exception"]
    return event.attributes or {}


@RUNNERS
def test_a_failed_run_marks_the_node_and_the_run(make: Any, traced: Traced) -> None:
    with pytest.raises(NodeError, match="a is 3"):
        sync(make(callbacks=[traced.callback]).run(FAILING, {"x": 2}))
    spans = traced.spans
    assert tree(spans) == ["run failing", "  node add_one", "  node check"]
    (failed,) = named(spans, "node check")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: a is 3"
    event = _exception(failed)
    assert event["exception.type"] == "ValueError" and event["exception.message"] == "a is 3"
    assert "raise ValueError" in event["exception.stacktrace"]
    (run,) = named(spans, "run failing")
    assert run.status.status_code is StatusCode.ERROR
    (ok,) = named(spans, "node add_one")
    assert ok.status.status_code is StatusCode.UNSET and not ok.events


@RUNNERS
def test_collected_failures_are_counted_on_their_batch_and_node(make: Any, traced: Traced) -> None:
    runner = make(callbacks=[traced.callback])
    sync(runner.map(FAILING, {"x": [0, 1, 2, 5, 2]}, map_over="x", batch_size=10,
                    on_error="collect"))  # fmt: skip
    spans = traced.spans
    (failed,) = named(spans, "node check")
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)["hypernodes.items.failed"] == 2
    event = _exception(failed)
    assert event["exception.type"] == "ValueError"
    assert event["hypernodes.item.index"] == 2 and event["hypernodes.items.failed"] == 2
    (batch,) = named(spans, "batch")
    assert attrs(batch)["hypernodes.items.failed"] == 2
    (root,) = named(spans, "map failing")
    assert attrs(root)["hypernodes.items.ok"] == 3 and attrs(root)["hypernodes.items.failed"] == 2
    assert root.status.status_code is StatusCode.UNSET  # the map itself finished


@RUNNERS
def test_a_map_stopped_by_a_failure_ends_every_span(make: Any, traced: Traced) -> None:
    runner = make(callbacks=[traced.callback])
    with pytest.raises(NodeError, match="a is 3"):
        sync(runner.map(FAILING, {"x": [0, 2, 1]}, map_over="x", batch_size=10))
    spans = traced.spans  # asserts that every span started has ended
    assert tree(spans) == ["map failing", "  batch", "    node add_one", "    node check"]
    (failed,) = named(spans, "node check")
    assert failed.status.status_code is StatusCode.ERROR
    assert _exception(failed)["hypernodes.item.index"] == 1
    (root,) = named(spans, "map failing")
    assert root.status.status_code is StatusCode.ERROR
    assert within(failed, root)


# -- engines ----------------------------------------------------------------------------------


@llm_node(engine="upper", output_name="loud")
def loud(word: str) -> str:
    return f"say {word}"


WORDS = ["ab", "cde", "f", "ghij", "k"]


@RUNNERS
def test_node_spans_carry_the_tokens_and_the_engine_start_has_a_span(
    make: Any, traced: Traced
) -> None:
    runner = make(engines={"upper": CountingEngine("upper")}, callbacks=[traced.callback])
    sync(runner.map(Graph([loud], name="tokens"), {"word": WORDS}, map_over="word", batch_size=2))
    spans = traced.spans
    loud_spans = named(spans, "node loud")
    assert len(loud_spans) == 3
    tokens_in = [attrs(s)["gen_ai.usage.input_tokens"] for s in loud_spans]
    tokens_out = [attrs(s)["gen_ai.usage.output_tokens"] for s in loud_spans]
    assert tokens_in == [4, 4, 2]  # "say" and the word, per item of each batch
    assert tokens_out == [len("SAY ab") + len("SAY cde"), len("SAY f") + len("SAY ghij"),
                          len("SAY k")]  # fmt: skip
    (start,) = named(spans, "engine start upper")
    (root,) = named(spans, "map tokens")
    assert parent_of(start, spans) is root and attrs(start)["hypernodes.engine"] == "upper"


# -- the package stays light ----------------------------------------------------------------


def test_importing_the_package_imports_no_opentelemetry() -> None:
    code = "import sys, hypernodes_chain; print(sorted(m for m in sys.modules if 'opentelemetry' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- work done elsewhere: Dask workers, Daft processes ------------------------------------------


@node(output_name="t")
def stamp(x: int) -> int:
    """When the item was computed, by the clock of the process that computed it."""
    return time.time_ns()


@node(output_name="pid")
def where(t: int) -> int:
    return os.getpid()


STAMPED = Graph([stamp, where], name="stamped")

# Daft starts its UDF processes with ``python -m``: they cannot import this module, so its
# functions travel by value, as a script's would
try:
    import cloudpickle
except ImportError:  # the Dask and Daft tests skip without it
    pass
else:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def check_remote_spans(spans: Sequence[ReadableSpan], rows: list[dict[str, Any]]) -> None:
    """Four batches of five; each item's own time lies within its batch's ``stamp`` span,
    which lies within its batch, which lies within the map."""
    assert tree(spans) == ["map stamped", *["  batch", "    node stamp", "    node where"] * 4]
    assert {r["pid"] for r in rows}.isdisjoint({os.getpid()})  # the work ran elsewhere
    (root,) = named(spans, "map stamped")
    stamps = named(spans, "node stamp")
    for k, span in enumerate(stamps):
        batch = parent_of(span, spans)
        assert attrs(batch)["hypernodes.batch.start"] == 5 * k and within(batch, root)
        assert within(span, batch)
        for r in rows[5 * k : 5 * k + 5]:
            assert span.start_time <= r["t"] <= span.end_time  # type: ignore[operator]


@pytest.fixture(scope="module")
def client() -> Any:
    distributed = pytest.importorskip("distributed")
    import logging

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=logging.ERROR)  # fmt: skip
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def test_dask_workers_batches_are_spans_with_the_workers_times(client: Any, traced: Traced) -> None:
    from hypernodes_chain import DaskRunner

    runner = DaskRunner(client, callbacks=[traced.callback])
    rows = runner.map(STAMPED, {"x": range(20)}, map_over="x", batch_size=5)
    check_remote_spans(traced.spans, rows)


def test_dask_run_nests_a_graph_node_as_in_process(client: Any, traced: Traced) -> None:
    from hypernodes_chain import DaskRunner

    assert DaskRunner(client, callbacks=[traced.callback]).run(OUTER, {"x": 1}) == {"a": 2, "b": 4}
    assert tree(traced.spans) == [
        "run outer",
        "  node add_one",
        "  node inner_node",
        "    graph inner",
        "      node double",
    ]


# Daft 0.7.26 never closes the stdout pipe of a UDF process it has torn down
@pytest.mark.filterwarnings(r"ignore:unclosed file <_io\.(BufferedReader|FileIO):ResourceWarning")
def test_daft_processes_batches_are_spans_with_their_times(traced: Traced) -> None:
    daft = pytest.importorskip("daft")
    from hypernodes_chain import DaftRunner

    runner = DaftRunner(callbacks=[traced.callback], concurrency=1)
    rows = runner.map(STAMPED, {"x": range(20)}, map_over="x", batch_size=5)
    check_remote_spans(traced.spans, rows)
    daft.from_pydict({"x": [1]}).collect()  # Daft drops the UDF's handles here, not later
    gc.collect()


# -- OTLP over HTTP, decoded from the wire ---------------------------------------------------


def test_a_10_000_item_map_sends_one_span_per_batch_and_node_over_otlp() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from support.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "reviews"}))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint))
        )
        runner = Runner(callbacks=[OpenTelemetryCallback(tracer_provider=provider)])
        out = runner.map(CHAIN, {"x": range(10_000)}, map_over="x", batch_size=1024)
        assert len(out) == 10_000
        assert provider.force_flush()
        n_batches = 10  # 9 of 1024 items and one of 784
        spans = receiver.wait_for(1 + n_batches + 3 * n_batches)
        provider.shutdown()
    assert len(spans) == 41
    assert Counter(s.name for s in spans) == {"map chain": 1, "batch": 10, "node add_one": 10,
                                              "node double": 10, "node minus_three": 10}  # fmt: skip
    by_id = {s.span_id: s for s in spans}
    assert len({s.trace_id for s in spans}) == 1

    def attr(span: Any, key: str) -> Any:
        (value,) = [a.value for a in span.attributes if a.key == key]
        return getattr(value, value.WhichOneof("value"))

    (root,) = [s for s in spans if s.name == "map chain"]
    assert root.parent_span_id == b"" and attr(root, "hypernodes.items.ok") == 10_000
    batches = [s for s in spans if s.name == "batch"]
    assert all(by_id[b.parent_span_id] is root for b in batches)
    assert sorted(attr(b, "hypernodes.batch.start") for b in batches) == list(
        range(0, 10_000, 1024)
    )
    for s in spans:
        if s.name.startswith("node "):
            batch = by_id[s.parent_span_id]
            assert batch.name == "batch"
            assert attr(s, "hypernodes.batch.start") == attr(batch, "hypernodes.batch.start")
            assert batch.start_time_unix_nano <= s.start_time_unix_nano
            assert s.end_time_unix_nano <= batch.end_time_unix_nano
