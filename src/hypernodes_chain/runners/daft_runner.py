"""`DaftRunner`: the core's map flow with its batch tasks run by Daft; ``map_dataframe``.

The map flow, the writer, the reorder buffer and the events stay on the driver, as under
`Runner`; only the driver of the work differs (`DaftDriver`): each `BatchTask` of a
``map`` becomes one row of a Daft query whose UDF runs the core's batch flow (see
``_daft_feed`` for how rows go in and out, ``_daft_udf`` for what runs inside Daft).
Where the UDF runs:

- Daft's threads of the driver's process (the default on Daft's native runner): the tasks
  stay objects, nothing is pickled, a `MemoryCache` works;
- ``concurrency=N``, or a graph with LLM nodes: a class UDF (``daft.cls``) with N
  instances, each a UDF process (a Ray actor on Ray) holding its own engine broker, GPUs
  requested when its engines need them; tasks travel as ``_remote`` bytes;
- Daft's Ray runner (``daft.set_runner_ray()``, set by the user): a UDF on the cluster.

``run`` executes here with the sync driver (one item is no query). ``map_dataframe``
applies a graph to a Daft DataFrame lazily, as columns. daft is imported when first
needed (extra ``daft``).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._columns import Lockstep, arrow_batches
from ..cache import Cache, MemoryCache
from ..events import Event, Subscriber
from ..exceptions import UnknownInputError
from ..graph import Graph, GraphNode
from ..plan import Plan, build_plan, with_bound
from ..results import MapResult
from . import _remote
from ._base import _check_graph
from ._daft_types import daft, output_struct
from ._drive import SyncDriver
from ._work import BatchTask, ColumnCall, ItemCall, MapFlow, Settings, Work
from .runner import Runner

if TYPE_CHECKING:
    from ._daft_feed import StreamFeed, WindowFeed

__all__ = ["DaftRunner"]

_TO = "Daft's UDF processes"


class DaftDriver(SyncDriver):
    """Hands a map's batch tasks to one Daft query (`_Rows`); runs everything else here,
    with `SyncDriver.batches`."""

    def __init__(self, runner: DaftRunner) -> None:
        super().__init__()
        self.runner = runner

    def shipper(self) -> _Rows:
        return _Rows(self.runner)


class _Rows:
    """The Daft rows of one flow: a map's batch tasks (other work runs here); one query,
    started with the first task."""

    def __init__(self, runner: DaftRunner) -> None:
        self.runner = runner
        self.feed: StreamFeed | WindowFeed | None = None

    @property
    def pending(self) -> bool:
        return self.feed is not None

    def ships(self, piece: Work) -> bool:
        match piece:
            case BatchTask():  # unless a node may wait for an interrupt's answer, here
                return piece.local.interactive is None
            case ItemCall() | ColumnCall():
                return False

    def send(self, piece: Work) -> None:
        assert isinstance(piece, BatchTask)  # the only work it ships
        if self.feed is None:
            self.feed = self.runner._feed(piece)
        self.feed.put(piece)

    def receive(self) -> list[Work]:
        assert self.feed is not None  # asked only while pending
        return [_publish(task, events) for task, events in self.feed.finished()]

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()


def _publish(task: BatchTask, events: list[Event]) -> BatchTask:
    """Publish the events a task raised in Daft on the driver's bus (here, in order)."""
    return _remote.publish(task, task.local.bus, events)


class DaftRunner(Runner):
    """Run graphs on Daft; ``run``, ``map`` and ``imap`` are `Runner`'s.

    Parameters
    ----------
    cache
        A `DiskCache` (reopened by path wherever the UDF runs), or a `MemoryCache` where
        the UDF runs in this process (Daft's native runner, no ``concurrency``, no LLM
        nodes); elsewhere a `MemoryCache` is refused.
    callbacks
        Subscribers of every event; the events of each batch are published here.
    engines
        An `EngineBroker` (or a dict of engines or factories). A graph with LLM nodes runs
        as a class UDF: each instance builds its own broker from the registrations.
    resources
        ``{name: factory or object}`` for ``resource(name)`` parameters: built once per
        process the UDF runs in (an object must pickle to go there).
    concurrency
        Instances of a class UDF (``daft.cls(max_concurrency=N)``: N UDF processes on
        Daft's native runner, N actors on Ray). None: Daft's threads of this process, or
        one instance for a graph with LLM nodes.

    ``map`` and ``imap`` also take a ``daft.DataFrame`` as ``inputs``: ``map_over`` names
    its columns. `map_dataframe` applies a graph to a DataFrame lazily, as columns.
    """

    def __init__(
        self,
        *,
        cache: Cache | None = None,
        callbacks: Sequence[Subscriber] | Subscriber | None = None,
        engines: object = None,
        resources: Mapping[str, object] | None = None,
        concurrency: int | None = None,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            msg = f"concurrency must be a positive int or None, got {concurrency!r}"
            raise ValueError(msg)
        self.concurrency = concurrency
        if concurrency is not None:
            _check_cache(cache, "concurrency=")
        super().__init__(cache=cache, callbacks=callbacks, engines=engines, resources=resources)

    @property
    def _in_flight(self) -> int:  # type: ignore[override]
        return 2 * (self.concurrency or os.cpu_count() or 1)

    def __repr__(self) -> str:
        return f"DaftRunner(concurrency={self.concurrency})"

    # -- map_dataframe ------------------------------------------------------------------
    def map_dataframe(
        self,
        graph: Graph,
        df: Any,
        *,
        output_name: str | Iterable[str] | None = None,
        batch_size: int = 1024,
    ) -> Any:
        """``df`` with the graph's outputs added as columns, lazily (nothing runs here).

        The graph's inputs are read from the columns of the same names; the other columns
        pass through. Each output becomes a column typed from its node's return annotation
        (a pydantic model or a `TypedDict` a struct, ``Any`` or none Python objects). The
        core's batch flow runs once per Daft batch of at most ``batch_size`` rows; a node
        that fails raises its `NodeError` into Daft (in a UDF process Daft reports it as a
        RuntimeError carrying the text). Cache keys are `Runner`'s.

        Returns
        -------
        daft.DataFrame
        """
        from . import _daft_udf as udf

        _check_graph(graph)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            msg = f"batch_size must be a positive int, got {batch_size!r}"
            raise ValueError(msg)
        d = daft()
        columns = list(df.column_names)
        wanted = (*graph.inputs, *graph.optional_inputs)
        given = [n for n in wanted if n in columns]
        plan = build_plan(graph, output_name, with_bound(graph, dict.fromkeys(given)))
        settings = self._context().settings
        engines = _engines_of(_plan_nodes(plan), settings)
        here = self.concurrency is None and not engines and not _on_ray()
        if not here:
            _check_cache(settings.cache, _why(self.concurrency, engines))
        frame = udf.Frame(plan, settings, *output_struct(plan))
        ref = udf.FrameRef(frame, uuid.uuid4().hex, b"" if here else _pack(plan, settings))
        opts = {"return_dtype": frame.dtype, "unnest": True, "batch_size": batch_size}
        args = [d.col(name) for name in frame.names]
        if engines or self.concurrency is not None:
            d.method.batch(**opts)(udf.FrameUDF.__call__)  # marks it; read when called below
            cls = d.cls(udf.FrameUDF, **_cls_options(self.concurrency, settings, engines))
            expr = cls(ref)(*args)
        else:
            fn = d.func.batch(**opts, use_process=False if here else None)(udf.frame_udf)
            expr = fn(ref, *args)
        keep = [c for c in columns if c not in plan.outputs]
        return df.select(*keep, expr)

    # -- driving ------------------------------------------------------------------------
    def _map_flow(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        *args: Any,
        **kw: Any,
    ) -> MapFlow[MapResult]:
        if _is_frame(inputs):  # a daft.DataFrame: its ``map_over`` columns
            inputs = _frame_inputs(inputs, map_over)
        return super()._map_flow(graph, inputs, map_over, *args, **kw)

    def _driver(self) -> SyncDriver:
        return DaftDriver(self)

    _feeds_engines = False  # Daft keeps its own UDF instances busy

    def _map_driver(self) -> SyncDriver:
        return self._driver()

    def _feed(self, first: BatchTask) -> StreamFeed | WindowFeed:
        """The feed of one map, chosen by its first batch task (see the module docstring)."""
        from ._daft_feed import Lane, StreamFeed, WindowFeed
        from ._daft_udf import BatchUDF

        settings = first.settings
        engines = _engines_of(first.plan.graph.walk(), settings)  # every segment's
        ray = _on_ray()
        here = self.concurrency is None and not engines and not ray
        if not here:
            _check_cache(settings.cache, _why(self.concurrency, engines))
        udf_class = None
        if engines or self.concurrency is not None:
            d = daft()
            d.method.batch(return_dtype=d.DataType.binary(), batch_size=1)(BatchUDF.__call__)
            udf_class = d.cls(BatchUDF, **_cls_options(self.concurrency, settings, engines))
        lane = Lane(first, here=here, udf_class=udf_class)
        return WindowFeed(lane) if ray else StreamFeed(lane)


# -- helpers ---------------------------------------------------------------------------------


def _on_ray() -> bool:
    return bool(daft().get_or_infer_runner_type() == "ray")


def _pack(plan: Plan, settings: Settings) -> bytes:
    from ._remote import pack_shared

    return pack_shared(plan, {}, None, settings, to=_TO)


def _plan_nodes(plan: Plan) -> Iterator[Any]:
    """The plan's nodes, each nested graph's nodes after it (as `Graph.walk` orders them)."""
    for step in plan.steps:
        yield step.node
        if isinstance(step.node, GraphNode):
            yield from step.node.graph.walk()


def _engines_of(nodes: Iterable[object], settings: Settings) -> list[str]:
    """The engines these LLM nodes use, when the run has a broker."""
    if settings.engines is None:
        return []
    return sorted({e for e in (getattr(n, "engine", None) for n in nodes) if isinstance(e, str)})


def _cls_options(
    concurrency: int | None, settings: Settings, engines: list[str]
) -> dict[str, object]:
    """``daft.cls`` options: ``concurrency`` instances (one without), a GPU each when an
    engine needs one (vLLM, or a model on a CUDA device)."""
    gpus = 0.0
    for name in engines:
        try:
            identity = settings.engines.identity(name)  # builds a factory's engine, starts none
        except Exception:  # an unknown engine: its nodes fail in the batch flow, as anywhere
            continue
        device = str(identity.get("device") or "")
        if identity.get("engine") == "vllm" or device.startswith("cuda"):
            gpus = 1.0
    return {"max_concurrency": concurrency or 1, "gpus": gpus, "name_override": "hypernodes"}


def _why(concurrency: int | None, engines: list[str]) -> str:
    if concurrency is not None:
        return "concurrency="
    return "LLM nodes (a class UDF)" if engines else "Daft's Ray runner"


def _check_cache(cache: Cache | None, why: str) -> None:
    if isinstance(cache, MemoryCache):
        msg = (
            f"DaftRunner cannot share a MemoryCache with the processes its UDF runs in "
            f"({why}); use DiskCache(path), or a DaftRunner without concurrency on Daft's "
            "native runner, whose UDF runs in this process"
        )
        raise TypeError(msg)


def _is_frame(inputs: object) -> bool:
    """Whether ``inputs`` is a daft.DataFrame (never importing daft to find out)."""
    loaded = sys.modules.get("daft")
    frame = getattr(loaded, "DataFrame", None)
    return frame is not None and isinstance(inputs, frame)


def _frame_inputs(df: Any, map_over: str | Iterable[str]) -> dict[str, Iterator[object]]:
    """A DataFrame's ``map_over`` columns as lazy iterators of Python values, read batch
    by batch (Daft reads ahead of them: it computes ahead of a slow consumer)."""
    over = [map_over] if isinstance(map_over, str) else list(map_over)
    missing = [name for name in over if name not in df.column_names]
    if missing:
        msg = f"map_over names {missing}, which are not columns of the DataFrame {df.column_names}"
        raise UnknownInputError(msg)
    return Lockstep(arrow_batches(df.select(*over).to_arrow_iter(), over), over).iterators()
