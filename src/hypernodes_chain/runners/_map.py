"""The core's map flow: lazy items, batches as tasks, results in order, writer hand-off.

`map_flow` consumes the ``map_over`` iterables lazily (zip or cartesian product), cuts
them into batches and yields each as a `BatchTask`, keeping up to ``in_flight`` of them
out at once; the driver runs them (in place, or elsewhere) and sends them back in any
order. Finished batches leave in input order: as `BatchRows` (for ``map`` returning a
list and for ``imap``) or to the writer. Memory stays O(in_flight x batch_size) whenever
results go to a writer or ``imap``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from itertools import islice, product
from typing import Any

from .. import hashing
from ..events import BatchFinished, MapFinished, MapStarted
from ..exceptions import MapInputError
from ..plan import Plan
from ..results import ItemFailure, MapResult
from ._invoke import plan_invokers
from ._segments import plan_segments, segmented_batches
from ._sources import as_column
from ._work import BatchRows, BatchTask, Context, Flow

__all__ = ["map_batches", "map_flow", "normalize_map_over"]


def _length(values: object) -> int | None:
    try:
        return len(values)  # type: ignore[arg-type]
    except TypeError:
        return None


def _iterator(name: str, values: object) -> Iterator[Any]:
    if isinstance(values, (str, bytes, Mapping)):
        msg = (
            f"map input {name!r} must be an iterable of items (a list, a generator, a reader); "
            f"got {type(values).__name__}"
        )
        raise MapInputError(msg)
    try:
        return iter(values)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        msg = f"map input {name!r} is not iterable: got {type(values).__name__}"
        raise MapInputError(msg) from None


def _has_more(it: Iterator[Any]) -> bool:
    for _ in it:
        return True
    return False


def _zip_batches(
    names: Sequence[str], iterables: Sequence[Iterator[Any]], batch_size: int
) -> Iterator[list[list[Any]]]:
    done = 0
    while True:
        columns = [list(islice(it, batch_size)) for it in iterables]
        sizes = {len(c) for c in columns}
        if len(sizes) > 1 or (
            len(columns[0]) < batch_size and any(_has_more(it) for it in iterables)
        ):
            shortest = min(range(len(names)), key=lambda k: len(columns[k]))
            longer = [n for k, n in enumerate(names) if k != shortest]
            msg = (
                f"map inputs have unequal lengths: {names[shortest]!r} ended after "
                f"{done + len(columns[shortest])} items but {longer} have more "
                f"(map_mode='zip' pairs items one to one; use map_mode='product' for every "
                f"combination)"
            )
            raise MapInputError(msg)
        if not columns[0]:
            return
        done += len(columns[0])
        yield columns


def _product_batches(
    iterables: Sequence[Iterator[Any]], batch_size: int
) -> Iterator[list[list[Any]]]:
    rest = [list(it) for it in iterables[1:]]  # the first one stays lazy (outermost loop)
    combos = product(iterables[0], *rest)
    while True:
        chunk = list(islice(combos, batch_size))
        if not chunk:
            return
        yield [list(col) for col in zip(*chunk)]


def map_batches(
    inputs: Mapping[str, Any], map_over: Sequence[str], map_mode: str, batch_size: int
) -> tuple[Iterator[list[list[Any]]], int | None]:
    """Batches as columns (one list per ``map_over`` input) and the item count if known."""
    columns = [as_column(inputs[name]) for name in map_over]  # library columns: Python values
    lengths = [_length(values) for values in columns]
    iterables = [_iterator(name, values) for name, values in zip(map_over, columns)]
    if map_mode == "zip":
        known = [n for n in lengths if n is not None]
        if len(known) == len(lengths) and len(set(known)) > 1:
            sizes = dict(zip(map_over, lengths))
            msg = (
                f"map inputs have unequal lengths {sizes} (map_mode='zip' pairs items one "
                f"to one; use map_mode='product' for every combination)"
            )
            raise MapInputError(msg)
        total = known[0] if len(known) == len(lengths) and known else None
        return _zip_batches(map_over, iterables, batch_size), total
    total = math.prod(lengths) if None not in lengths else None  # type: ignore[arg-type]
    if any(n == 0 for n in lengths):
        total = 0
    return _product_batches(iterables, batch_size), total


def map_flow(
    plan: Plan,
    inputs: Mapping[str, Any],
    map_over: Sequence[str],
    map_mode: str,
    ctx: Context,
    *,
    batch_size: int,
    writer: Any = None,
    in_flight: int = 1,
    engine_window: int = 100_000,
) -> Flow:
    """Run ``plan`` over every item: yields `BatchTask` lists (up to ``in_flight`` batches
    at once) and `BatchRows`, receives finished tasks in any order, returns `MapResult`.

    Results leave in input order: finished batches wait in a reorder buffer for the ones
    before them, so memory stays O(in_flight x batch_size). When the plan needs more
    engines than the broker keeps alive, items go through in windows of ``engine_window``,
    one engine segment after the other (see ``_segments``).
    """
    t_start = time.perf_counter()
    bus = ctx.bus if ctx.bus.active else None
    path = (plan.graph.name,)
    constants = {k: v for k, v in inputs.items() if k not in map_over}
    batches, total = map_batches(inputs, map_over, map_mode, batch_size)
    constant_keys = None
    if ctx.cache is not None:
        constant_keys = {k: hashing.fingerprint(v) for k, v in constants.items()}
    result = MapResult(path=getattr(writer, "path", None))
    finished = False
    error: BaseException | None = None
    skip: Container[int] = ()
    if writer is not None:  # from here on, the writer is closed whatever happens
        invokers = plan_invokers(plan)
        fingerprints = {
            step.node.name: invoker.fingerprint(step.node, ctx.settings)
            for step, invoker in zip(plan.steps, invokers)
        }
        skip = writer.open(
            graph_name=plan.graph.name,
            input_names=list(map_over),
            output_names=list(plan.outputs),
            fingerprints=fingerprints,
        )
    try:
        if bus is not None:
            bus.publish(
                MapStarted(
                    path=path,
                    graph=plan.graph.name,
                    total=total,
                    batch_size=batch_size,
                    graph_obj=plan.graph,
                    n_skipped=_n_stored(skip),
                )
            )

        def report(first: int, done: BatchTask | None) -> Flow:
            """Hand one finished batch on (nothing for a batch stored by an earlier run)."""
            n_done = n_failed = 0
            t0 = time.perf_counter()
            cache_seconds = 0.0
            if done is not None:
                n_done = len(done.indices)
                n_failed = len((yield from _emit(done, plan, writer, ctx, result)))
                cache_seconds = done.outcome.cache_seconds if done.outcome is not None else 0.0
            if bus is not None:
                bus.publish(
                    BatchFinished(
                        path=path,
                        graph=plan.graph.name,
                        start=first,
                        n_items=n_done,
                        n_failed=n_failed,
                        n_done=result.n_items,
                        write_seconds=time.perf_counter() - t0 if writer is not None else 0.0,
                        cache_seconds=cache_seconds,
                    )
                )

        segments = plan_segments(plan, ctx.settings)
        if segments is not None:
            windows = _windows(batches, map_over, skip, result, engine_window)
            yield from segmented_batches(
                segments, windows, constants, constant_keys, ctx, report, plan
            )
            finished = True
            return result
        pending: dict[int, BatchTask] = {}  # in flight, by sequence number
        ready: dict[int, tuple[int, BatchTask | None]] = {}  # done, waiting for their turn
        starts: dict[int, int] = {}
        start = seq = emitted = 0
        exhausted = False
        while True:
            while emitted in ready:  # hand on what is done, in input order, before reading on
                first, done = ready.pop(emitted)
                yield from report(first, done)
                emitted += 1
            new: list[BatchTask] = []
            # batches out = in flight + done but waiting for an earlier one: at most in_flight
            while not exhausted and len(pending) + len(ready) < in_flight:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                n_read = len(batch[0])
                indices = list(range(start, start + n_read))
                starts[seq], start = start, start + n_read
                if skip:
                    indices, batch = _unstored(indices, batch, skip, result)
                if indices:
                    task = BatchTask(
                        plan,
                        dict(zip(map_over, batch)),
                        constants,
                        indices,
                        ctx.settings,
                        ctx.local,
                        seq=seq,
                        constant_keys=constant_keys,
                    )
                    pending[seq] = task
                    new.append(task)
                else:  # every item of the batch was stored by an earlier run
                    ready[seq] = (starts.pop(seq), None)
                seq += 1
            if not new and not pending:
                if emitted in ready:
                    continue  # batches skipped whole are still to be reported
                break
            for task in (yield new):
                del pending[task.seq]
                if task.error is not None:
                    raise task.error
                ready[task.seq] = (starts.pop(task.seq), task)
        finished = True
    except BaseException as exc:  # the map stops here: say so to listeners, then re-raise
        # closed by its driver on the way out of an error (Ctrl-C in a node): report that
        error = exc.__context__ if isinstance(exc, GeneratorExit) and exc.__context__ else exc
        raise
    finally:
        if writer is not None:
            written = writer.close(finished=finished)
            result.files = list(written.files)
            result.path = written.path
            result.total_ok = getattr(written, "total_ok", result.n_ok)
            result.total_failed = getattr(written, "total_failed", result.n_failed)
        result.duration_s = time.perf_counter() - t_start
        if bus is not None:
            bus.publish(
                MapFinished(
                    path=path,
                    graph=plan.graph.name,
                    n_items=result.n_items,
                    n_ok=result.n_ok,
                    n_failed=result.n_failed,
                    duration=result.duration_s,
                    error=None if finished else error,
                )
            )
    return result


def _n_stored(skip: Container[int]) -> int:
    """How many items a writer said are stored already (0 when it cannot say)."""
    try:
        return len(skip)  # type: ignore[arg-type]
    except TypeError:
        return 0


def _windows(
    batches: Iterator[list[list[Any]]],
    map_over: Sequence[str],
    skip: Container[int],
    result: MapResult,
    size: int,
) -> Iterator[Iterator[tuple[int, list[int], dict[str, list[Any]]]]]:
    """Map batches ``size`` items at a time, each window an iterator to exhaust before the
    next (nothing of a window is held here): ``(first, indices, columns)`` per batch, the
    items an earlier run stored already left out, a batch crossing a window's end cut."""
    parts = _parts(batches, map_over, skip, result, size)
    pending = next(parts, None)

    def window() -> Iterator[tuple[int, list[int], dict[str, list[Any]]]]:
        nonlocal pending
        while pending is not None:
            part, closes = pending
            pending = next(parts, None)
            yield part
            if closes:
                return

    while pending is not None:
        yield window()


def _unstored(
    indices: list[int], batch: list[list[Any]], skip: Container[int], result: MapResult
) -> tuple[list[int], list[list[Any]]]:
    """The batch less the items an earlier run stored (counted as skipped)."""
    keep = [pos for pos, i in enumerate(indices) if i not in skip]
    result.n_skipped += len(indices) - len(keep)
    if len(keep) == len(indices):
        return indices, batch
    return [indices[pos] for pos in keep], [[col[pos] for pos in keep] for col in batch]


def _parts(
    batches: Iterator[list[list[Any]]],
    map_over: Sequence[str],
    skip: Container[int],
    result: MapResult,
    size: int,
) -> Iterator[tuple[tuple[int, list[int], dict[str, list[Any]]], bool]]:
    """``((first, indices, columns), closes_its_window)`` for every stretch of a batch."""
    start = n = 0
    for batch in batches:
        n_read = len(batch[0])
        indices = list(range(start, start + n_read))
        first, start = start, start + n_read
        if skip:
            indices, batch = _unstored(indices, batch, skip, result)
        while indices:  # a batch that crosses the window's end is cut there
            take = min(len(indices), size - n)
            part = [col[:take] for col in batch]
            n += take
            yield (first, indices[:take], dict(zip(map_over, part))), n >= size
            n %= size
            indices, batch = indices[take:], [col[take:] for col in batch]
            first = indices[0] if indices else first


def _emit(task: BatchTask, plan: Plan, writer: Any, ctx: Context, result: MapResult) -> Flow:
    """Hand one finished batch on (to the writer, or as `BatchRows`); count it."""
    outcome, indices, columns = task.outcome, task.indices, task.columns
    assert outcome is not None
    failures = _failures(outcome, columns)
    n_done = len(indices)
    if writer is not None:
        refused = _write(writer, plan.outputs, indices, columns, outcome, failures)
        if refused and ctx.on_error != "collect":
            _count(result, n_done, [*failures, *refused])
            raise refused[0].error
        failures.extend(refused)
    else:
        yield BatchRows(_rows(plan.outputs, outcome, n_done, failures))
    _count(result, n_done, failures)
    return failures


def _failures(outcome: Any, columns: Mapping[str, list[Any]]) -> list[ItemFailure]:
    """The batch's failure records in item order, each with the item's mapped inputs."""
    return [
        outcome.failures[pos].with_inputs({k: v[pos] for k, v in columns.items()})
        for pos in sorted(outcome.failures)
    ]


def _rows(outputs: Sequence[str], outcome: Any, n: int, failures: list[ItemFailure]) -> list[Any]:
    columns = [outcome.column(o, n) for o in outputs]
    rows: list[Any] = _row_builder(tuple(outputs))(columns)
    for pos, failure in zip(sorted(outcome.failures), failures):
        rows[pos] = failure
    return rows


_BUILDERS: dict[tuple[str, ...], Any] = {}


def _row_builder(outputs: tuple[str, ...]) -> Any:
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
    result.failures.extend(failures)


def _write(
    writer: Any,
    outputs: Sequence[str],
    indices: list[int],
    columns: dict[str, list[Any]],
    outcome: Any,
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


def normalize_map_over(map_over: str | Iterable[str]) -> tuple[str, ...]:
    return (map_over,) if isinstance(map_over, str) else tuple(map_over)
