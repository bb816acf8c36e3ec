"""The work protocol between the core's flows and the drivers, and what a flow runs with.

A flow is a generator ``Flow[R] = Generator[Sequence[Work], list[Work], R]``: it yields the
work that is ready and receives back whichever pieces have finished, in any order and any
number at a time, then returns its result ``R``. Three kinds of work (`Work`):

- `ItemCall`: one node for one item (``run``, nested graphs, once-per-batch nodes);
- `ColumnCall`: one node for the rows of a batch;
- `BatchTask`: a whole batch of a ``map`` (plan, columns, constants, the travelling part of
  the context). A driver runs it in place with `batch_flow`, or ships it elsewhere
  (it pickles without the `Local` part; the plan travels as graph and names).

A map's flow (`MapFlow`) also yields `BatchRows`, finished rows for the caller.

A call's node is run by its `Invoker`, chosen once per plan step; its body yields effects
(``_effects``) that every driver resolves. A call that drives a flow of its own (a nested
graph) says so with ``carries_flow``: the drivers never ask what kind a node is.
The context is split in two: `Settings` can travel to another process with a batch task;
`Local` (the event bus, interrupt handlers, an ``iter`` session, the event loop) cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from ..events import EventBus
from ..plan import Plan, Step, build_plan

if TYPE_CHECKING:
    from ..cache import Cache
    from ..interrupts import Session
    from ..node import Node
    from ..results import ItemFailure
    from ._effects import Body

__all__ = [
    "BatchOutcome",
    "BatchRows",
    "BatchTask",
    "Broker",
    "ColumnCall",
    "Context",
    "Flow",
    "FlowFactory",
    "Handlers",
    "Invoker",
    "ItemCall",
    "Keys",
    "Local",
    "MapFlow",
    "Settings",
    "Work",
]

R = TypeVar("R")
Handlers: TypeAlias = "Mapping[str, Callable[..., object]]"
"""Interrupt answerers by interrupt name: each gets the question's value, returns the answer."""
Keys: TypeAlias = "dict[str, str | None]"
"""Cache keys by value name (None: that value has no key, so nothing after it is cached)."""


@dataclass(frozen=True)
class Settings:
    """What a batch task takes with it to another process."""

    cache: Cache | None = None
    on_error: str = "raise"
    # the engine broker (``engines.EngineBroker``, duck-typed here: the core never calls
    # it, LLM nodes do); it travels as its registrations, never as live engines
    engines: Any = None


@dataclass
class Local:
    """What stays in the driver's process: the bus, interrupt answerers, the loop."""

    bus: EventBus = field(default_factory=EventBus)
    handlers: Handlers | None = None
    session: Session | None = None  # an AsyncRunner.iter session that can answer interrupts
    loop: asyncio.AbstractEventLoop | None = None  # an AsyncRunner's (async handlers, threads)
    inline: bool = False  # the core may call plain functions itself (serial sync runner)

    @property
    def interactive(self) -> Local | None:
        """This context when a node's interrupt can be answered, else None (fast path)."""
        return self if self.handlers is not None or self.session is not None else None


@dataclass
class Context:
    """Settings plus the local part: everything a flow needs for one run or map."""

    settings: Settings
    local: Local

    @property
    def cache(self) -> Cache | None:
        return self.settings.cache

    @property
    def on_error(self) -> str:
        return self.settings.on_error

    @property
    def bus(self) -> EventBus:
        return self.local.bus


class Broker(Protocol):
    """What the runners need of an engine broker (``engines.EngineBroker``): the bus that
    hears its engines start and stop, and closing it. It pickles as its registrations."""

    bus: EventBus | None

    def close(self) -> None: ...


class Invoker(Protocol):
    """How one node kind is called: a body per call shape, run by every driver.

    A new node kind registers its own (``_invoke.register_invoker``); the core never
    switches on kinds.
    """

    cacheable: bool  # may its results be looked up and stored in the cache?

    def engine_of(self, node: Node[..., Any]) -> str | None:
        """The engine this kind's calls use (None: none), for engine-aware maps."""
        ...

    def fingerprint(self, node: Node[..., Any], settings: Settings) -> str | None:
        """The node's cache identity in this run."""
        ...

    def flow(self, call: ItemCall, ctx: Context, keys: Keys | None) -> FlowFactory | None:
        """The flow this call drives (a nested graph's), or None: most kinds have none."""
        ...

    def flows(
        self, call: ColumnCall, ctx: Context, keys: Callable[[int], Keys | None]
    ) -> list[FlowFactory] | None:
        """Per row, the flow it drives, or None; ``keys(pos)``: the source keys of the
        item at batch position ``pos``."""
        ...

    def item(self, call: ItemCall) -> Body:
        """Call the node for one item; returns its value (raises its error)."""
        ...

    def column(self, call: ColumnCall) -> Body:
        """Call the node for every row; returns ``(values, failed)``."""
        ...


class ItemCall:
    """Run one node for one item (``index`` is None outside ``map``)."""

    __slots__ = (
        "args",
        "bus",
        "error",
        "flow",
        "index",
        "invoker",
        "key",
        "local",
        "path",
        "pos",
        "result",
        "settings",
        "step",
        "t0",
        "tokens",
    )

    def __init__(
        self,
        step: Step,
        invoker: Invoker,
        args: Sequence[object],
        index: int | None,
        path: tuple[str, ...],
        bus: EventBus | None,
        local: Local | None,
        pos: int = 0,
        settings: Settings | None = None,
    ) -> None:
        self.step = step
        self.invoker = invoker
        self.args = args
        self.index = index
        self.path = path
        self.bus = bus  # set only when someone listens (streamed chunks)
        self.local = local  # set only when interrupts can be answered
        self.pos = pos  # the step's position in its plan
        self.settings = settings  # the run's cache, on_error and engines (for invokers)
        self.flow: FlowFactory | None = None  # the flow it drives (its invoker's `flow`)
        self.key: str | None = None
        self.result: object = None
        self.error: BaseException | None = None
        self.t0 = 0.0
        self.tokens: tuple[int, int] | None = None  # (prompt, completion) of engine calls

    @property
    def carries_flow(self) -> bool:
        """Whether running it drives a flow of its own (a nested graph)."""
        return self.flow is not None


class ColumnCall:
    """Run one node for the ``n`` rows of a batch.

    ``args`` holds one entry per parameter: a list of ``n`` values, or (where ``constant``
    says so) the one value every row shares. ``rows`` gives the same as one tuple per row,
    built on first use. After it ran: ``results`` (one value per row; anything at a
    failed row) and ``failed`` (row position -> exception): the one place failures are
    counted.
    """

    __slots__ = (
        "_rows",
        "args",
        "bus",
        "constant",
        "failed",
        "flows",
        "hits",
        "indices",
        "invoker",
        "keys",
        "local",
        "n",
        "path",
        "pos",
        "positions",
        "results",
        "settings",
        "step",
        "t0",
        "tokens",
    )

    def __init__(
        self,
        step: Step,
        invoker: Invoker,
        args: list[Any],  # a column (list) or, where ``constant``, the shared value
        n: int,
        indices: list[int],
        path: tuple[str, ...],
        bus: EventBus | None,
        constant: tuple[bool, ...],
        local: Local | None,
        pos: int = 0,
        settings: Settings | None = None,
    ) -> None:
        self.step = step
        self.invoker = invoker
        self.args = args
        self.n = n
        self._rows: list[tuple[object, ...]] | None = None
        self.indices = indices
        self.path = path
        self.bus = bus
        self.constant = constant  # per argument: the same for every row (batch nodes get it plain)
        self.local = local
        self.pos = pos
        self.settings = settings
        self.flows: list[FlowFactory] | None = None  # per row: the flows they drive
        self.results: list[object] = []
        self.failed: dict[int, BaseException] = {}
        self.t0 = 0.0
        self.tokens: tuple[int, int] | None = None  # (prompt, completion) of engine calls
        # the batch flow's bookkeeping: batch positions of the rows, cache keys and hits
        self.positions: list[int] = []
        self.keys: list[str | None] | None = None
        self.hits = 0

    @property
    def carries_flow(self) -> bool:
        """Whether its rows drive flows of their own (a nested graph)."""
        return self.flows is not None

    def columns(self, start: int = 0, stop: int | None = None) -> list[Iterable[object]]:
        """Per parameter, the values of rows ``start..stop`` (constants repeated)."""
        stop = self.n if stop is None else stop
        whole = start == 0 and stop == self.n
        return [
            repeat(arg, stop - start) if const else arg if whole else arg[start:stop]
            for arg, const in zip(self.args, self.constant)
        ]

    @property
    def rows(self) -> list[tuple[object, ...]]:
        """One tuple of arguments per row."""
        if self._rows is None:
            self._rows = list(zip(*self.columns())) if self.args else [()] * self.n
        return self._rows

    def release(self) -> None:
        """Let go of the arguments and results (the call may outlive the batch's columns)."""
        self.args, self._rows, self.results = [], None, []

    def batch_arguments(self) -> list[object]:
        """Lists for the varying arguments, plain values for the constant ones."""
        if not self.n:
            return []
        return [arg if const else list(arg) for arg, const in zip(self.args, self.constant)]


class BatchOutcome:
    """What `batch_flow` returns: output columns, their keys, and failed positions."""

    __slots__ = ("cache_seconds", "columns", "constants", "failures", "keys")

    def __init__(
        self,
        columns: dict[str, list[object]],
        constants: dict[str, object],
        keys: dict[str, list[str | None]],
        failures: dict[int, ItemFailure],
    ) -> None:
        self.columns = columns
        self.constants = constants
        self.keys = keys
        self.failures = failures
        self.cache_seconds = 0.0  # in cache look-ups and stores, where someone observed

    def column(self, name: str, n: int) -> list[object]:
        if name in self.columns:
            return self.columns[name]
        if name in self.constants:
            return [self.constants[name]] * n
        return [None] * n  # never computed: every item failed earlier (or there are none)


class BatchTask:
    """One batch of a map, as a message: run it with ``batch_flow(task)``.

    A driver fills ``outcome`` (or ``error``) and sends the task back. Pickled, it carries
    the graph and the plan's names (the plan is rebuilt on the other side), the columns,
    the settings and the constant keys, but not ``local``: a remote driver gives it one.
    """

    __slots__ = (
        "columns",
        "constant_keys",
        "constants",
        "error",
        "indices",
        "key_columns",
        "local",
        "outcome",
        "plan",
        "seq",
        "settings",
    )

    def __init__(
        self,
        plan: Plan,
        columns: dict[str, list[object]],
        constants: dict[str, object],
        indices: list[int],
        settings: Settings,
        local: Local,
        *,
        seq: int = 0,
        constant_keys: dict[str, str | None] | None = None,
        key_columns: dict[str, list[str | None]] | None = None,
    ) -> None:
        self.plan = plan
        self.columns = columns
        self.constants = constants
        self.indices = indices
        self.settings = settings
        self.local = local
        self.seq = seq  # the batch's position in the map: results are emitted in this order
        self.constant_keys = constant_keys
        self.key_columns = key_columns  # given when the inputs' cache keys are known already
        self.outcome: BatchOutcome | None = None
        self.error: BaseException | None = None

    def __getstate__(self) -> dict[str, object]:
        state = {k: getattr(self, k) for k in self.__slots__ if k not in ("plan", "local")}
        plan = self.plan
        state["plan"] = (plan.graph, plan.outputs, plan.given)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        graph, outputs, given = state.pop("plan")
        self.plan = build_plan(graph, outputs, given)
        self.local = Local()
        for k, v in state.items():
            setattr(self, k, v)


class BatchRows:
    """One finished batch, yielded by `map_flow` when there is no writer."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[object]) -> None:
        self.rows = rows


Work: TypeAlias = "ItemCall | ColumnCall | BatchTask"
Flow: TypeAlias = Generator[Sequence[Work], list[Work], R]
"""A flow that returns ``R``: yields ready work, receives finished work (see above)."""
MapFlow: TypeAlias = Generator["Sequence[Work] | BatchRows", "list[Work] | None", R]
"""A map's flow: it also yields `BatchRows` (and receives None for them)."""
FlowFactory: TypeAlias = Callable[[], "Flow[object]"]
