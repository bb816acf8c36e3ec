"""The messages between the core's flows and the drivers, and what a flow runs with.

A flow is a generator ``Flow = Generator[list[Work], list[Work], Result]``: it yields the
work that is ready and receives back whichever pieces have finished, in any order and any
number at a time. Three kinds of work:

- `ItemCall`: one node for one item (``run``, nested graphs, once-per-batch nodes);
- `ColumnCall`: one node for the rows of a batch;
- `BatchTask`: a whole batch of a ``map`` (plan, columns, constants, the travelling part of
  the context). A driver runs it in place with `batch_flow`, or could ship it elsewhere
  (it pickles without the `Local` part; the plan travels as graph and names).

A call's node is run by its `Invoker` (see ``_invoke``), whose one body every driver runs.
The context is split in two: `Settings` can travel to another process with a batch task;
`Local` (the event bus, interrupt handlers, an ``iter`` session, the event loop) cannot.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

from ..events import EventBus
from ..plan import Plan, Step, build_plan

if TYPE_CHECKING:
    from ..cache import Cache
    from ..results import ItemFailure
    from ._invoke import Invoker

__all__ = [
    "BatchOutcome",
    "BatchRows",
    "BatchTask",
    "ColumnCall",
    "Context",
    "Flow",
    "ItemCall",
    "Local",
    "Settings",
]

Flow = Generator[Any, Any, Any]


@dataclass(frozen=True)
class Settings:
    """What a batch task takes with it to another process."""

    cache: Cache | None = None
    on_error: str = "raise"
    engines: Any = None  # the broker's registrations (factories), never live engines


@dataclass
class Local:
    """What stays in the driver's process: the bus, interrupt answerers, the loop."""

    bus: EventBus = field(default_factory=EventBus)
    handlers: Mapping[str, Any] | None = None
    session: Any = None  # an AsyncRunner.iter session that can answer interrupts
    loop: Any = None  # the event loop of an AsyncRunner (async handlers from threads)
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
    )

    def __init__(
        self,
        step: Step,
        invoker: Invoker,
        args: tuple[Any, ...] | list[Any],
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
        self.flow: Any = None  # a nested graph's flow factory, when the invoker needs one
        self.key: str | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.t0 = 0.0


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
    )

    def __init__(
        self,
        step: Step,
        invoker: Invoker,
        args: list[Any],
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
        self._rows: list[tuple[Any, ...]] | None = None
        self.indices = indices
        self.path = path
        self.bus = bus
        self.constant = constant  # per argument: the same for every row (batch nodes get it plain)
        self.local = local
        self.pos = pos
        self.settings = settings
        self.flows: list[Any] | None = None  # per row, for nested graphs
        self.results: list[Any] = []
        self.failed: dict[int, BaseException] = {}
        self.t0 = 0.0
        # the batch flow's bookkeeping: batch positions of the rows, cache keys and hits
        self.positions: list[int] = []
        self.keys: list[str | None] | None = None
        self.hits = 0

    def columns(self, start: int = 0, stop: int | None = None) -> list[Iterable[Any]]:
        """Per parameter, the values of rows ``start..stop`` (constants repeated)."""
        stop = self.n if stop is None else stop
        whole = start == 0 and stop == self.n
        return [
            repeat(arg, stop - start) if const else arg if whole else arg[start:stop]
            for arg, const in zip(self.args, self.constant)
        ]

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple of arguments per row."""
        if self._rows is None:
            self._rows = list(zip(*self.columns())) if self.args else [()] * self.n
        return self._rows

    def release(self) -> None:
        """Let go of the arguments and results (the call may outlive the batch's columns)."""
        self.args, self._rows, self.results = [], None, []

    def batch_arguments(self) -> list[Any]:
        """Lists for the varying arguments, plain values for the constant ones."""
        if not self.n:
            return []
        return [arg if const else list(arg) for arg, const in zip(self.args, self.constant)]


class BatchOutcome:
    """What `batch_flow` returns: output columns, their keys, and failed positions."""

    __slots__ = ("cache_seconds", "columns", "constants", "failures", "keys")

    def __init__(
        self,
        columns: dict[str, list[Any]],
        constants: dict[str, Any],
        keys: dict[str, list[str | None]],
        failures: dict[int, ItemFailure],
    ) -> None:
        self.columns = columns
        self.constants = constants
        self.keys = keys
        self.failures = failures
        self.cache_seconds = 0.0  # in cache look-ups and stores, where someone observed

    def column(self, name: str, n: int) -> list[Any]:
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
        columns: dict[str, list[Any]],
        constants: dict[str, Any],
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

    def __getstate__(self) -> dict[str, Any]:
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

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows
