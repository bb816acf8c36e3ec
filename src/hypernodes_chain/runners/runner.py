"""`Runner`: drives the core's flows in this thread (or a thread pool), one batch at a time;
a map whose nodes call engines keeps several batches at the engines (``_threads``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, overload

from .._aio import close_finished_loops
from ..cache import Cache
from ..events import Subscriber
from ..graph import Graph
from ..results import MapResult, Writer
from ._base import BaseRunner
from ._drive import SyncDriver, iterate
from ._threads import FeedingDriver
from ._work import Handlers

__all__ = ["Runner"]

_INLINE = SyncDriver()  # holds no state: one serves every serial runner


class Runner(BaseRunner):
    """Run graphs synchronously.

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
    max_workers
        Size of a thread pool for independent nodes and the items of a column;
        ``None`` runs everything in the calling thread.
    """

    _feeds_engines = True  # an engine map's batches run in threads (`FeedingDriver`)

    def __init__(
        self,
        cache: Cache | None = None,
        callbacks: Sequence[Subscriber] | Subscriber | None = None,
        engines: object = None,
        max_workers: int | None = None,
        resources: Mapping[str, object] | None = None,
    ) -> None:
        self.max_workers = max_workers
        self._inline = max_workers is None or max_workers <= 1
        super().__init__(cache=cache, callbacks=callbacks, engines=engines, resources=resources)
        self._pool: ThreadPoolExecutor | None = None

    # -- public API -------------------------------------------------------------
    def run(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        output_name: str | Iterable[str] | None = None,
        handlers: Handlers | None = None,
    ) -> dict[str, Any]:
        """Run ``graph`` once; returns every output, or those named by ``output_name``."""
        flow, outputs = self._run_flow(graph, inputs, output_name, handlers)
        values, _ = self._driver().drive(flow)
        return {name: values[name] for name in outputs}

    @overload
    def map(
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
    def map(
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

    def map(
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
        """Run ``graph`` once per item of the ``map_over`` inputs.

        Returns a list in input order (an `ItemFailure` in a failed item's place under
        ``on_error="collect"``), or a `MapResult` when ``writer`` is given.
        """
        flow = self._map_flow(
            graph, inputs, map_over, map_mode, output_name, batch_size, writer, on_error,
            handlers, engine_window=engine_window,
        )  # fmt: skip
        rows: list[Any] = []
        batches = self._map_driver().batches(flow)
        while True:
            try:
                rows += next(batches)
            except StopIteration as stop:
                result: MapResult = stop.value
                return result if writer is not None else rows

    def imap(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        map_mode: str = "zip",
        output_name: str | Iterable[str] | None = None,
        batch_size: int = 1024,
        writer: None = None,
        on_error: str = "raise",
        handlers: Handlers | None = None,
        engine_window: int = 100_000,
    ) -> Iterator[Any]:
        """Like `map`, lazily: yields each item's result in input order, batch by batch.

        Memory stays O(batch_size). ``writer`` is not accepted here: results are yielded,
        so use ``map(..., writer=...)`` to stream them to disk.
        """
        if writer is not None:
            msg = "imap yields results instead of writing them; use map(..., writer=...)"
            raise ValueError(msg)
        flow = self._map_flow(
            graph, inputs, map_over, map_mode, output_name, batch_size, None, on_error, handlers,
            engine_window=engine_window,
        )  # fmt: skip
        yield from iterate(self._map_driver().batches(flow))

    def close(self) -> None:
        """Shut the thread pool down (if one was started), closing its threads' loops."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            close_finished_loops()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driving ------------------------------------------------------------------
    def _driver(self) -> SyncDriver:
        if self.max_workers is None or self.max_workers <= 1:
            return _INLINE
        return SyncDriver(self._worker_pool(), self.max_workers)

    def _map_driver(self) -> SyncDriver:
        """A map's driver: batches of engine plans in threads of their own."""
        if self.max_workers is None or self.max_workers <= 1:
            return FeedingDriver()
        return FeedingDriver(self._worker_pool(), self.max_workers)

    def _worker_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="hypernodes")
        return self._pool
