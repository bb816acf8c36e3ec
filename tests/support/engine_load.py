"""Load on an engine from several callers at once, shared by the tests of the HTTP engines
(each counts what its loopback server saw)::

    both_at_once(lambda: engine.generate(a), lambda: engine.generate(b))
    rows = two_nodes_map(engine, "AsyncRunner", reviews)  # two @llm_node on engine "o"
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

from hypernodes_chain import AsyncRunner, Graph, Runner
from hypernodes_chain.llm import llm_node

__all__ = ["RUNNER_KINDS", "both_at_once", "closed_port", "two_nodes_map"]

RUNNER_KINDS = ["Runner(max_workers=4)", "AsyncRunner"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def both_at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own thread, released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    return results


@llm_node(engine="o", output_name="first", max_tokens=2)
def first(review: str) -> str:
    return f"first: {review}"


@llm_node(engine="o", output_name="second", max_tokens=2)
def second(review: str) -> str:
    return f"second: {review}"


def two_nodes_map(engine: Any, runner_kind: str, reviews: list[str]) -> list[dict[str, Any]]:
    """A map of two LLM nodes sharing ``engine`` (as "o"), batches of 4, under
    ``runner_kind`` (one of `RUNNER_KINDS`); the engine is stopped after."""
    graph = Graph([first, second])
    try:
        if runner_kind == "AsyncRunner":
            runner = AsyncRunner(engines={"o": engine})
            return asyncio.run(runner.map(graph, {"review": reviews}, map_over="review",
                                          batch_size=4))  # fmt: skip
        with Runner(engines={"o": engine}, max_workers=4) as pooled:
            return pooled.map(graph, {"review": reviews}, map_over="review", batch_size=4)
    finally:
        engine.stop()
