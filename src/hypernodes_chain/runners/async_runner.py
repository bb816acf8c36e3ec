"""`AsyncRunner`: drives the core's flows as asyncio tasks.

Every piece of work the core yields becomes a task; whichever finish first are sent back,
so independent nodes overlap (also inside a map's batch), map items run concurrently and
two batches of a map are out at once. One semaphore per run or map caps the calls in
flight (``max_concurrency``), nested graphs included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload

from ..cache import Cache
from ..events import Subscriber
from ..graph import Graph
from ..results import MapResult, Writer
from ._base import BaseRunner
from ._drive import AsyncDriver, Limiter
from ._work import Handlers
from .graph_run import GraphRun

__all__ = ["AsyncRunner"]


class AsyncRunner(BaseRunner):
    """Run graphs on asyncio: ``await runner.run(...)`` works in Jupyter as it is.

    Parameters
    ----------
    cache
        A `DiskCache` or `MemoryCache`; every node result (every item in ``map``)
        is looked up before it runs and stored after.
    callbacks
        Subscribers (usually `Callback` instances) that receive every event.
    engines
        An `EngineBroker` shared by the LLM nodes.
    resources
        ``{name: factory or object}``: what nodes ask for with ``resource(name)``
        parameter defaults (a tokenizer, a model, a connection pool). A factory (a class
        or function of no arguments) is called on first use, once per process; an object
        is used as it is. They join the engines' broker (its lifetime, per worker process
        under Dask and Daft).
    max_concurrency
        The most node calls in flight at once, across a whole run or map.
    """

    # two batches of a map out at once: one computes while the other's results are written
    _in_flight = 2
    _feeds_engines = True  # batch tasks are asyncio tasks: an engine map keeps more out

    def __init__(
        self,
        cache: Cache | None = None,
        callbacks: Sequence[Subscriber] | Subscriber | None = None,
        engines: object = None,
        max_concurrency: int = 64,
        resources: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(cache=cache, callbacks=callbacks, engines=engines, resources=resources)
        if max_concurrency < 1:
            msg = f"max_concurrency must be at least 1, got {max_concurrency!r}"
            raise ValueError(msg)
        self.max_concurrency = max_concurrency

    async def run(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        output_name: str | Iterable[str] | None = None,
        handlers: Handlers | None = None,
    ) -> dict[str, Any]:
        """Run ``graph`` once; returns every output, or those named by ``output_name``."""
        return await self._run(graph, inputs, output_name, handlers)

    async def _run(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        output_name: str | Iterable[str] | None = None,
        handlers: Handlers | None = None,
        **context: Any,  # an iter() session and its event sink
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        flow, outputs = self._run_flow(graph, inputs, output_name, handlers, loop=loop, **context)
        values, _ = await AsyncDriver(Limiter(self.max_concurrency)).drive(flow)
        return {name: values[name] for name in outputs}

    @overload
    async def map(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        map_mode: str = ...,
        output_name: str | Iterable[str] | None = ...,
        batch_size: int = ...,
        writer: None = ...,
        on_error: str = ...,
        handlers: Handlers | None = ...,
        engine_window: int = ...,
    ) -> list[Any]: ...

    @overload
    async def map(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        map_mode: str = ...,
        output_name: str | Iterable[str] | None = ...,
        batch_size: int = ...,
        *,
        writer: Writer,
        on_error: str = ...,
        handlers: Handlers | None = ...,
        engine_window: int = ...,
    ) -> MapResult: ...

    async def map(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        map_mode: str = "zip",
        output_name: str | Iterable[str] | None = None,
        batch_size: int = 1024,
        writer: Writer | None = None,
        on_error: str = "raise",
        handlers: Handlers | None = None,
        engine_window: int = 100_000,
    ) -> list[Any] | MapResult:
        """Run ``graph`` once per item of the ``map_over`` inputs, items concurrently.

        Returns a list in input order (an `ItemFailure` in a failed item's place under
        ``on_error="collect"``), or a `MapResult` when ``writer`` is given.
        """
        return await self._map(
            graph, inputs, map_over, map_mode, output_name, batch_size, writer, on_error,
            handlers, engine_window=engine_window,
        )  # fmt: skip

    async def _map(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        map_mode: str = "zip",
        output_name: str | Iterable[str] | None = None,
        batch_size: int = 1024,
        writer: Writer | None = None,
        on_error: str = "raise",
        handlers: Handlers | None = None,
        engine_window: int = 100_000,
        **context: Any,  # an iter() session and its event sink
    ) -> list[Any] | MapResult:
        loop = asyncio.get_running_loop()
        flow = self._map_flow(
            graph, inputs, map_over, map_mode, output_name, batch_size, writer, on_error,
            handlers, engine_window=engine_window, loop=loop, **context,
        )  # fmt: skip
        rows: list[Any] = []
        driver = AsyncDriver(Limiter(self.max_concurrency))
        result: MapResult = await driver.drive(flow, on_rows=rows.extend)
        return result if writer is not None else rows

    def iter(self, graph: Graph, inputs: Mapping[str, object], **kwargs: Any) -> GraphRun:
        """Stream the events of a run (or of a map, when ``map_over`` is given).

        Use as ``async with runner.iter(graph, inputs) as run: async for event in run``;
        answer an `InterruptEvent` with ``run.respond(answer)``; read ``run.result`` after.
        """
        if "map_over" in kwargs:
            return GraphRun(lambda **context: self._map(graph, inputs, **kwargs, **context))
        return GraphRun(lambda **context: self._run(graph, inputs, **kwargs, **context))
