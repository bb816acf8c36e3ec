"""Where a map's finished batches go: in input order, to the caller or to the writer.

`map_flow` schedules the batches; a `Handoff` takes each one once it is done. A batch that
finished early waits in the reorder buffer for the ones before it, then leaves as
`BatchRows` (``map`` returning a list, ``imap``) or as columns to the writer, and is
counted into the map's `MapResult`. The failure records go on with their batch (in the rows,
or to the writer, which stores them and lists them in its own result); the handoff keeps
only their count, so a map's memory does not grow with its failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping, Sequence
from types import TracebackType

from ..events import BatchFinished, MapFinished, MapStarted
from ..plan import Plan
from ..results import ItemFailure, MapResult, Writer
from ._invoke import plan_invokers
from ._work import BatchOutcome, BatchRows, BatchTask, Context, MapFlow

__all__ = ["Handoff"]

_RowBuilder = Callable[[Sequence[Sequence[object]]], list[object]]


class Handoff:
    """The output side of one map: what happens to a batch once it is done.

    Owns the reorder buffer (batches done, by sequence number, until their turn), the
    writer (opened by `open`; closed on the way out of ``with handoff:``, whatever
    happened), the `MapResult` every batch is counted into, and the map's events
    (`MapStarted`, one `BatchFinished` per batch, `MapFinished`).
    """

    def __init__(self, plan: Plan, ctx: Context, writer: Writer | None) -> None:
        self.t_start = time.perf_counter()
        self.plan = plan
        self.ctx = ctx
        self.writer = writer
        self.bus = ctx.bus if ctx.bus.active else None
        self.path = (plan.graph.name,)
        self.result = MapResult(path=getattr(writer, "path", None))
        self._ready: dict[int, tuple[int, BatchTask | None]] = {}  # done, waiting their turn
        self._next = 0  # the sequence number of the batch to hand on next

    # -- the map's start and end ---------------------------------------------------------

    def open(self, map_over: Sequence[str]) -> Container[int]:
        """Open the writer (enter the handoff next: its exit closes the writer); return the
        items the writer holds already."""
        writer, plan = self.writer, self.plan
        if writer is None:
            return ()
        fingerprints = {
            step.node.name: invoker.fingerprint(step.node, self.ctx.settings)
            for step, invoker in zip(plan.steps, plan_invokers(plan))
        }
        return writer.open(
            graph_name=plan.graph.name,
            input_names=list(map_over),
            output_names=list(plan.outputs),
            fingerprints=fingerprints,
        )

    def start(self, total: int | None, batch_size: int, skip: Container[int]) -> None:
        """Say the map started (``total`` items if known, ``skip`` of them stored already)."""
        if self.bus is not None:
            self.bus.publish(
                MapStarted(
                    path=self.path,
                    graph=self.plan.graph.name,
                    total=total,
                    batch_size=batch_size,
                    graph_obj=self.plan.graph,
                    n_skipped=_n_stored(skip),
                )
            )

    def __enter__(self) -> Handoff:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the writer (its files and totals go into the result), then say the map
        ended: finished, or stopped by ``exc``."""
        # closed by its driver on the way out of an error (Ctrl-C in a node): report that
        if isinstance(exc, GeneratorExit) and exc.__context__:
            exc = exc.__context__
        result = self.result
        if self.writer is not None:
            written = self.writer.close(finished=exc is None)
            result.files = list(written.files)
            result.failures = written.failures
            result.path = written.path
            result.total_ok = getattr(written, "total_ok", result.n_ok)
            result.total_failed = getattr(written, "total_failed", result.n_failed)
        result.duration_s = time.perf_counter() - self.t_start
        if self.bus is not None:
            self.bus.publish(
                MapFinished(
                    path=self.path,
                    graph=self.plan.graph.name,
                    n_items=result.n_items,
                    n_ok=result.n_ok,
                    n_failed=result.n_failed,
                    duration=result.duration_s,
                    error=exc,
                )
            )

    # -- the reorder buffer --------------------------------------------------------------

    def done(self, seq: int, first: int, task: BatchTask | None) -> None:
        """Batch ``seq`` (items from ``first`` on) is done; None: an earlier run stored it."""
        self._ready[seq] = (first, task)

    @property
    def waiting(self) -> int:
        """Batches done but waiting for an earlier one."""
        return len(self._ready)

    @property
    def due(self) -> bool:
        """Whether the next batch in input order is done."""
        return self._next in self._ready

    def flush(self) -> MapFlow[None]:
        """Hand on every batch whose turn has come, in input order."""
        while self._next in self._ready:
            first, task = self._ready.pop(self._next)
            yield from self.report(first, task)
            self._next += 1

    def report(self, first: int, task: BatchTask | None) -> MapFlow[None]:
        """Hand one finished batch on (nothing for a batch stored by an earlier run)."""
        n_done = n_failed = 0
        t0 = time.perf_counter()
        cache_seconds = 0.0
        if task is not None:
            n_done = len(task.indices)
            n_failed = len((yield from self._emit(task)))
            cache_seconds = task.outcome.cache_seconds if task.outcome is not None else 0.0
        if self.bus is not None:
            self.bus.publish(
                BatchFinished(
                    path=self.path,
                    graph=self.plan.graph.name,
                    start=first,
                    n_items=n_done,
                    n_failed=n_failed,
                    n_done=self.result.n_items,
                    write_seconds=time.perf_counter() - t0 if self.writer is not None else 0.0,
                    cache_seconds=cache_seconds,
                )
            )

    def _emit(self, task: BatchTask) -> MapFlow[list[ItemFailure]]:
        """Hand one finished batch on (to the writer, or as `BatchRows`); count it."""
        outcome, indices, columns = task.outcome, task.indices, task.columns
        assert outcome is not None
        outputs, result = self.plan.outputs, self.result
        failures = _failures(outcome, columns)
        n_done = len(indices)
        if self.writer is not None:
            refused = _write(self.writer, outputs, indices, columns, outcome, failures)
            if refused and self.ctx.on_error != "collect":
                _count(result, n_done, [*failures, *refused])
                raise refused[0].error
            failures.extend(refused)
        else:
            yield BatchRows(_rows(outputs, outcome, n_done, failures))
        _count(result, n_done, failures)
        return failures


def _n_stored(skip: Container[int]) -> int:
    """How many items a writer said are stored already (0 when it cannot say)."""
    try:
        return len(skip)  # type: ignore[arg-type]
    except TypeError:
        return 0


def _failures(outcome: BatchOutcome, columns: Mapping[str, list[object]]) -> list[ItemFailure]:
    """The batch's failure records in item order, each with the item's mapped inputs."""
    return [
        outcome.failures[pos].with_inputs({k: v[pos] for k, v in columns.items()})
        for pos in sorted(outcome.failures)
    ]


def _rows(
    outputs: Sequence[str], outcome: BatchOutcome, n: int, failures: list[ItemFailure]
) -> list[object]:
    columns = [outcome.column(o, n) for o in outputs]
    rows = _row_builder(tuple(outputs))(columns)
    for pos, failure in zip(sorted(outcome.failures), failures):
        rows[pos] = failure
    return rows


_BUILDERS: dict[tuple[str, ...], _RowBuilder] = {}


def _row_builder(outputs: tuple[str, ...]) -> _RowBuilder:
    """A compiled ``columns -> [{"a": a, "b": b}, ...]``: about twice as fast as zip+dict."""
    builder = _BUILDERS.get(outputs)
    if builder is None:
        names = [f"v{k}" for k in range(len(outputs))]
        items = ", ".join(f"{o!r}: {v}" for o, v in zip(outputs, names))
        source = f"lambda columns: [{{{items}}} for {', '.join(names)}, in zip(*columns)]"
        builder = _BUILDERS[outputs] = eval(source, {})
    return builder


def _count(result: MapResult, n: int, failures: list[ItemFailure]) -> None:
    result.n_items += n
    result.n_failed += len(failures)
    result.n_ok += n - len(failures)


def _write(
    writer: Writer,
    outputs: Sequence[str],
    indices: list[int],
    columns: Mapping[str, list[object]],
    outcome: BatchOutcome,
    failures: list[ItemFailure],
) -> list[ItemFailure]:
    """Hand a batch to the writer column by column, leaving failed items to its errors;
    return the items the writer could not store."""
    n = len(indices)
    out_columns = {o: outcome.column(o, n) for o in outputs}
    if failures:
        keep = [pos for pos in range(n) if pos not in outcome.failures]
        indices = [indices[pos] for pos in keep]
        columns = {k: [v[pos] for pos in keep] for k, v in columns.items()}
        out_columns = {k: [v[pos] for pos in keep] for k, v in out_columns.items()}
    return list(writer.write_columns(indices, columns, out_columns, failures) or ())
