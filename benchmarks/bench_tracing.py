"""What OpenTelemetry tracing costs a map: `OpenTelemetryCallback` on vs off.

    python benchmarks/bench_tracing.py [--quick]

The chain ``x -> a=x+1 -> b=a*2 -> c=b-3`` over 100,000 items (``Runner().map``, batches of
1,024), once with an `OpenTelemetryCallback` whose spans go to the SDK's in-memory exporter
(through a `SimpleSpanProcessor`: every span is exported as it ends, inside the timing),
once without a callback, and once with a callback that does nothing (what the core's events
cost alone). They alternate, one repeat each per round, five rounds; the medians of the wall
time and of the thread's CPU time (the fairer one on a busy machine) and their ratios are
printed. Target: traced / plain <= 1.1. Then the span tree of one small map, with
durations. Needs the ``otel`` extra.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import gc
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from importlib import metadata
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.tracing import OpenTelemetryCallback

TARGET = 1.1


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


def traced() -> tuple[OpenTelemetryCallback, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetryCallback(tracer_provider=provider), exporter


def timed_map(n: int, callbacks: list[Callable[[Any], None]]) -> tuple[float, float]:
    """Wall and CPU seconds of one map of ``n`` items."""
    runner = Runner(callbacks=callbacks)
    gc.collect()
    t0, c0 = time.perf_counter(), time.thread_time()
    out = runner.map(CHAIN, {"x": range(n)}, map_over="x")
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert len(out) == n
    return elapsed, cpu


def nothing(event: Any) -> None:
    """A callback that does nothing: the core builds its events, no more."""


def render(spans: list[ReadableSpan]) -> str:
    """Indented names with durations, siblings in start order."""
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        parent = s.parent.span_id if s.parent is not None else None
        children[parent if parent in ids else None].append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(children[parent], key=lambda s: (s.start_time or 0, s.name)):
            ms = ((s.end_time or 0) - (s.start_time or 0)) / 1e6
            lines.append(f"{'  ' * depth}{s.name:<{34 - 2 * depth}} {ms:8.3f} ms")
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 items, 3 rounds")
    args = parser.parse_args()
    n, rounds = (20_000, 3) if args.quick else (100_000, 5)
    print(f"python {platform.python_version()}, opentelemetry-sdk "
          f"{metadata.version('opentelemetry-sdk')}, {os.cpu_count()} cpus")  # fmt: skip
    timed_map(n, [])  # warm-up: imports, plan memo
    timed_map(n, [traced()[0]])
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "events": [], "traced": []}
    n_spans = 0
    for _ in range(rounds):
        times["plain"].append(timed_map(n, []))
        times["events"].append(timed_map(n, [nothing]))
        callback, exporter = traced()
        times["traced"].append(timed_map(n, [callback]))
        n_spans = len(exporter.get_finished_spans())
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print(f"map of {n:,} items, 3-node chain, batches of 1,024, medians of {rounds}:")
    print(f"  {'':<34} {'wall':>9} {'cpu':>9}   {'µs/item (wall)'}")
    labels = {"plain": "no callback", "events": "a no-op callback (events only)",
              "traced": f"OpenTelemetryCallback ({n_spans} spans)"}  # fmt: skip
    for key, label in labels.items():
        print(f"  {label:<34} {wall[key] * 1e3:6.1f} ms {cpu[key] * 1e3:6.1f} ms   "
              f"{wall[key] / n * 1e6:.3f}")  # fmt: skip
    ratio, cpu_ratio = wall["traced"] / wall["plain"], cpu["traced"] / cpu["plain"]
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print(f"  ratio traced/plain: wall {ratio:.3f}, cpu {cpu_ratio:.3f}   "
          f"(target <= {TARGET}: {verdict})")  # fmt: skip
    per_span = (cpu["traced"] - cpu["events"]) / max(n_spans, 1) * 1e6
    print(f"  spans' own cost: {per_span:.1f} µs cpu per span")
    callback, exporter = traced()
    Runner(callbacks=[callback]).map(CHAIN, {"x": range(5)}, map_over="x", batch_size=2)
    print("\nspan tree of a map of 5 items in batches of 2:")
    print(render(list(exporter.get_finished_spans())))
    sys.exit(0 if ratio <= TARGET else 1)


if __name__ == "__main__":
    main()
