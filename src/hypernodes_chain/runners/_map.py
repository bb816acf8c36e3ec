"""The core's map flow: lazy items, batches as tasks, up to ``in_flight`` of them out.

`map_flow` consumes the ``map_over`` iterables lazily (zip or cartesian product), cuts
them into batches and yields each as a `BatchTask`, keeping up to ``in_flight`` of them
out at once; the driver runs them (in place, or elsewhere) and sends them back in any
order. A `Handoff` (``_handoff``) passes finished batches on in input order: as
`BatchRows` (for ``map`` returning a list and for ``imap``) or to the writer. Memory stays
O(in_flight x batch_size) whenever results go to a writer or ``imap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from itertools import islice, product

from .. import hashing
from ..exceptions import MapInputError
from ..plan import Plan
from ..results import MapResult, Writer
from ._handoff import Handoff
from ._segments import plan_segments, segmented_batches
from ._sources import as_column
from ._work import BatchTask, Context, MapFlow

__all__ = ["map_batches", "map_flow", "normalize_map_over"]

_Batch = list[list[object]]  # one batch of items: one list per ``map_over`` input
_Part = tuple[int, list[int], dict[str, list[object]]]  # (first, indices, columns by name)


def _length(values: object) -> int | None:
    try:
        return len(values)  # type: ignore[arg-type]
    except TypeError:
        return None


def _iterator(name: str, values: object) -> Iterator[object]:
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


def _has_more(it: Iterator[object]) -> bool:
    for _ in it:
        return True
    return False


def _zip_batches(
    names: Sequence[str], iterables: Sequence[Iterator[object]], batch_size: int
) -> Iterator[_Batch]:
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


def _product_batches(iterables: Sequence[Iterator[object]], batch_size: int) -> Iterator[_Batch]:
    rest = [list(it) for it in iterables[1:]]  # the first one stays lazy (outermost loop)
    combos = product(iterables[0], *rest)
    while True:
        chunk = list(islice(combos, batch_size))
        if not chunk:
            return
        yield [list(col) for col in zip(*chunk)]


def map_batches(
    inputs: Mapping[str, object], map_over: Sequence[str], map_mode: str, batch_size: int
) -> tuple[Iterator[_Batch], int | None]:
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
    inputs: Mapping[str, object],
    map_over: Sequence[str],
    map_mode: str,
    ctx: Context,
    *,
    batch_size: int,
    writer: Writer | None = None,
    in_flight: int = 1,
    engine_window: int = 100_000,
) -> MapFlow[MapResult]:
    """Run ``plan`` over every item: yields `BatchTask` lists (up to ``in_flight`` batches
    at once) and `BatchRows`, receives finished tasks in any order, returns `MapResult`.

    This schedules; a `Handoff` passes finished batches on in input order (to the writer
    or as `BatchRows`), so memory stays O(in_flight x batch_size). When the plan needs
    more engines than the broker keeps alive, items go through in windows of
    ``engine_window``, one engine segment after the other (see ``_segments``).
    """
    out = Handoff(plan, ctx, writer)
    constants = {k: v for k, v in inputs.items() if k not in map_over}
    batches, total = map_batches(inputs, map_over, map_mode, batch_size)
    constant_keys = None
    if ctx.cache is not None:
        constant_keys = {k: hashing.fingerprint(v) for k, v in constants.items()}
    skip = out.open(map_over)
    with out:  # from here on the writer is closed, and the end reported, whatever happens
        out.start(total, batch_size, skip)
        segments = plan_segments(plan, ctx.settings)
        if segments is not None:
            windows = _windows(batches, map_over, skip, out.result, engine_window)
            yield from segmented_batches(
                segments, windows, constants, constant_keys, ctx, out.report, plan
            )
            return out.result

        def task(seq: int, indices: list[int], batch: _Batch) -> BatchTask:
            columns = dict(zip(map_over, batch))
            return BatchTask(
                plan, columns, constants, indices, ctx.settings, ctx.local,
                seq=seq, constant_keys=constant_keys,
            )  # fmt: skip

        yield from _in_order(_numbered(batches, skip, out.result), task, out, in_flight)
    return out.result


def _in_order(
    numbered: Iterator[tuple[int, list[int], _Batch]],
    make: Callable[[int, list[int], _Batch], BatchTask],
    out: Handoff,
    in_flight: int,
) -> MapFlow[None]:
    """Keep up to ``in_flight`` batches out (in flight, or done and waiting for an earlier
    one in ``out``); each batch read becomes the task ``make(seq, indices, columns)``."""
    pending: dict[int, tuple[int, BatchTask]] = {}  # in flight, by sequence number
    seq = 0
    exhausted = False
    while True:
        yield from out.flush()  # hand on what is done, in input order, before reading on
        new: list[BatchTask] = []
        while not exhausted and len(pending) + out.waiting < in_flight:
            read = next(numbered, None)
            if read is None:
                exhausted = True
                break
            first, indices, batch = read
            if indices:
                new.append(make(seq, indices, batch))
                pending[seq] = (first, new[-1])
            else:  # every item of the batch was stored by an earlier run
                out.done(seq, first, None)
            seq += 1
        if not new and not pending:
            if out.due:
                continue  # batches skipped whole are still to be reported
            break
        finished = yield new
        assert finished is not None  # work is answered with the pieces that finished
        for done in finished:
            assert isinstance(done, BatchTask)
            first, _ = pending.pop(done.seq)
            if done.error is not None:
                raise done.error
            out.done(done.seq, first, done)


def _numbered(
    batches: Iterator[_Batch], skip: Container[int], result: MapResult
) -> Iterator[tuple[int, list[int], _Batch]]:
    """``(first, indices, columns)`` per batch read: the index of its first item, then the
    items an earlier run did not store (those it did are counted as skipped)."""
    start = 0
    for batch in batches:
        n_read = len(batch[0])
        indices = list(range(start, start + n_read))
        first, start = start, start + n_read
        if skip:
            indices, batch = _unstored(indices, batch, skip, result)
        yield first, indices, batch


def _windows(
    batches: Iterator[_Batch],
    map_over: Sequence[str],
    skip: Container[int],
    result: MapResult,
    size: int,
) -> Iterator[Iterator[_Part]]:
    """Map batches ``size`` items at a time, each window an iterator to exhaust before the
    next (nothing of a window is held here): ``(first, indices, columns)`` per batch, the
    items an earlier run stored already left out, a batch crossing a window's end cut."""
    parts = _parts(batches, map_over, skip, result, size)
    pending = next(parts, None)

    def window() -> Iterator[_Part]:
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
    indices: list[int], batch: _Batch, skip: Container[int], result: MapResult
) -> tuple[list[int], _Batch]:
    """The batch less the items an earlier run stored (counted as skipped)."""
    keep = [pos for pos, i in enumerate(indices) if i not in skip]
    result.n_skipped += len(indices) - len(keep)
    if len(keep) == len(indices):
        return indices, batch
    return [indices[pos] for pos in keep], [[col[pos] for pos in keep] for col in batch]


def _parts(
    batches: Iterator[_Batch],
    map_over: Sequence[str],
    skip: Container[int],
    result: MapResult,
    size: int,
) -> Iterator[tuple[_Part, bool]]:
    """``((first, indices, columns), closes_its_window)`` for every stretch of a batch."""
    n = 0
    for first, indices, batch in _numbered(batches, skip, result):
        while indices:  # a batch that crosses the window's end is cut there
            take = min(len(indices), size - n)
            part = [col[:take] for col in batch]
            n += take
            yield (first, indices[:take], dict(zip(map_over, part))), n >= size
            n %= size
            indices, batch = indices[take:], [col[take:] for col in batch]
            first = indices[0] if indices else first


def normalize_map_over(map_over: str | Iterable[str]) -> tuple[str, ...]:
    return (map_over,) if isinstance(map_over, str) else tuple(map_over)
