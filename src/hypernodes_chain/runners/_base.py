"""What every runner shares: its settings, argument checks, and the flows it drives.

Like httpx's ``BaseClient``, this owns every decision that is not about *how* a call
is executed, so `Runner`, `AsyncRunner` and `DaskRunner` stay thin mirrors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..cache import Cache
from ..events import EventBus, Subscriber
from ..exceptions import MapInputError, UnknownInputError
from ..graph import Graph
from ..interrupts import Session
from ..plan import Plan, build_plan, check_overrides, with_bound
from ..results import MapResult, Writer
from . import _nested  # noqa: F401  (registers the invoker of nested graphs)
from ._flows import item_flow
from ._invoke import plan_engines
from ._map import map_flow, normalize_map_over
from ._sources import as_inputs
from ._work import Context, Flow, Handlers, Keys, Local, MapFlow, Settings

__all__ = ["BaseRunner"]

_MAP_MODES = ("zip", "product")
ENGINE_QUEUE = 512  # prompts an engine map keeps queued at its engines (about)
MAX_ENGINE_BATCHES = 16  # the most batches an engine map keeps out
_ON_ERROR = ("raise", "collect")


class BaseRunner:
    """Settings and flow construction shared by all runners."""

    _inline = False  # may the core call plain functions itself? (only a serial sync runner)
    _in_flight = 1  # batches of a map out at once
    _feeds_engines = False  # does a map that calls engines keep more batches out?

    def __init__(
        self,
        cache: Cache | None = None,
        callbacks: Sequence[Subscriber] | Subscriber | None = None,
        engines: object = None,
        resources: Mapping[str, object] | None = None,
    ) -> None:
        self.cache = cache
        if callbacks is None:
            callbacks = []
        elif callable(callbacks):
            callbacks = [callbacks]
        self.callbacks: list[Subscriber] = list(callbacks)
        self.engines = engines
        self.resources = resources
        self._quiet = Local(inline=self._inline)  # no subscriber: shared, nothing to fail
        self._engines_given = (engines, resources)
        self._settings = Settings(cache=cache, engines=_as_broker(engines, resources))
        self._quiet_ctx: Context | None = None

    def _context(
        self,
        handlers: Handlers | None = None,
        on_error: str = "raise",
        *,
        session: Session | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        extra: Sequence[Subscriber] = (),
    ) -> Context:
        """The context of one run or map, from the runner's settings as they are now
        (a callback appended or a cache set after construction counts)."""
        settings = self._settings
        given = self._engines_given
        if (
            settings.cache is not self.cache
            or given[0] is not self.engines
            or given[1] is not self.resources
        ):
            self._engines_given = (self.engines, self.resources)
            settings = Settings(cache=self.cache, engines=_as_broker(self.engines, self.resources))
            self._settings = settings
        if on_error != settings.on_error:
            settings = Settings(cache=self.cache, on_error=on_error, engines=settings.engines)
        quiet = handlers is None and session is None and loop is None and not extra
        if quiet and not self.callbacks:  # the common case: nothing new to build
            if getattr(settings.engines, "bus", None) is not None:
                settings.engines.bus = None  # no listener in this run
            ctx = self._quiet_ctx
            if ctx is None or ctx.settings is not settings:
                ctx = self._quiet_ctx = Context(settings, self._quiet)
            return ctx
        local = Local(
            bus=EventBus([*self.callbacks, *extra]),  # a fresh bus: a failed one stays failed
            handlers=handlers,
            session=session,
            loop=loop,
            inline=self._inline,
        )
        if settings.engines is not None and hasattr(settings.engines, "bus"):
            settings.engines.bus = local.bus  # engine starts and stops show in this run
        return Context(settings, local)

    def _run_flow(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        output_name: str | Iterable[str] | None,
        handlers: Handlers | None,
        **context: Any,
    ) -> tuple[Flow[tuple[dict[str, Any], Keys]], tuple[str, ...]]:
        _check_graph(graph)
        inputs = with_bound(graph, inputs)
        plan = build_plan(graph, output_name, inputs)
        check_overrides(plan)
        ctx = self._context(handlers, **context)
        return item_flow(plan, dict(inputs), ctx), plan.outputs

    def _map_flow(
        self,
        graph: Graph,
        inputs: Mapping[str, object],
        map_over: str | Iterable[str],
        map_mode: str,
        output_name: str | Iterable[str] | None,
        batch_size: int,
        writer: Writer | None,
        on_error: str,
        handlers: Handlers | None,
        engine_window: int = 100_000,
        **context: Any,
    ) -> MapFlow[MapResult]:
        _check_graph(graph)
        if (
            isinstance(engine_window, bool)
            or not isinstance(engine_window, int)
            or engine_window < 1
        ):
            msg = f"engine_window must be a positive int, got {engine_window!r}"
            raise ValueError(msg)
        over = normalize_map_over(map_over)
        inputs = as_inputs(inputs, over)  # a table's columns, if a table was given
        inputs = with_bound(graph, inputs, over)  # bound values: constants, never mapped
        _check_map_args(inputs, over, map_mode, batch_size, on_error)
        plan = build_plan(graph, output_name, inputs)
        check_overrides(plan)  # once per map, not per item
        ctx = self._context(handlers, on_error, **context)
        return map_flow(
            plan,
            inputs,
            over,
            map_mode,
            ctx,
            batch_size=batch_size,
            writer=writer,
            in_flight=self._map_in_flight(plan, batch_size),
            engine_window=engine_window,
        )

    def _map_in_flight(self, plan: Plan, batch_size: int) -> int:
        """Batches of a map out at once: the runner's own number, or for a map whose nodes
        call engines (on a runner that feeds them), enough batches that about
        `ENGINE_QUEUE` prompts wait at the engines while the earliest batch finishes."""
        if not self._feeds_engines or not plan_engines(plan):
            return self._in_flight
        wanted = -(-ENGINE_QUEUE // batch_size)
        return max(self._in_flight, min(MAX_ENGINE_BATCHES, max(2, wanted)))


def _as_broker(engines: object, resources: Mapping[str, object] | None = None) -> object:
    """``engines=``: None, an `EngineBroker`, or a dict of engines it wraps in one.
    ``resources=`` (a dict) joins them: in a new broker, or registered in the one given
    (what it holds under a name already, it keeps)."""
    if resources is not None and not isinstance(resources, Mapping):
        msg = f"resources= takes a dict of {{name: factory or object}}, got {resources!r}"
        raise TypeError(msg)
    if resources is None and (engines is None or not isinstance(engines, Mapping)):
        return engines
    from ..engines.broker import EngineBroker  # light: no engine library is imported

    if engines is None or isinstance(engines, Mapping):
        return EngineBroker(dict(engines or {}), resources=resources)
    register = getattr(engines, "register_resource", None)
    if register is None:
        msg = f"resources= needs an EngineBroker to hold them, got engines={engines!r}"
        raise TypeError(msg)
    names = engines.names()  # type: ignore[attr-defined]
    for name, source in (resources or {}).items():
        if name not in names:
            register(name, source)
    return engines


def _check_graph(graph: object) -> None:
    if not isinstance(graph, Graph):
        msg = f"runners take a Graph as first argument, got {type(graph).__name__}"
        raise TypeError(msg)


def _check_map_args(
    inputs: Mapping[str, object],
    over: tuple[str, ...],
    map_mode: str,
    batch_size: int,
    on_error: str,
) -> None:
    if not over:
        msg = "map_over must name at least one input"
        raise MapInputError(msg)
    missing = [name for name in over if name not in inputs]
    if missing:
        msg = f"map_over names {missing}, which are not in inputs {sorted(inputs)}"
        raise UnknownInputError(msg)
    if map_mode not in _MAP_MODES:
        msg = f"map_mode must be one of {_MAP_MODES}, got {map_mode!r}"
        raise ValueError(msg)
    if on_error not in _ON_ERROR:
        msg = f"on_error must be one of {_ON_ERROR}, got {on_error!r}"
        raise ValueError(msg)
    if not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size must be a positive int, got {batch_size!r}"
        raise ValueError(msg)
