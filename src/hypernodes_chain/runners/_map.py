"""The core's map flow: lazy items, batches as tasks, up to ``in_flight`` of them out.

`map_flow` consumes the ``map_over`` iterables lazily (zip or cartesian product), cuts
them into batches and yields each as a `BatchTask`, keeping up to ``in_flight`` of them
out at once; the driver runs them (in place, or elsewhere) and sends them back in any
order. A `Handoff` (``_handoff``) passes finished batches on in input order: as
`BatchRows` (for ``map`` returning a list and for ``imap``) or to the writer. Memory stays
O(in_flight x batch_size) whenever results go to a writer or ``imap``.

There is one loop (`_in_order`); a `Stage` says what a batch's task is and where it goes
when done. A plain map has one stage (`_Direct`: each batch one task of the whole plan,
then the `Handoff`); an engine-aware map runs the loop once per window and engine segment
(``_segments``), each batch a task of that segment, the last segment's handed off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from itertools import islice, product
from typing import Protocol, TypeVar

from ..exceptions import MapInputError
from ..plan import Plan
from ..results import MapResult, Writer
from ._handoff import Handoff
from ._keys import keys_of_constants
from ._segments import Schedule, plan_segments, spill_folder
from ._sources import as_column
from ._work import BatchTask, Context, MapFlow

__all__ = ["map_batches", "map_flow", "normalize_map_over"]

_Batch = list[list[object]]  # one batch of items: one list per ``map_over`` input
J = TypeVar("J", contravariant=True)  # what a stage makes a batch task of


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
    more engines than the broker keeps alive, the same loop runs the items in windows of
    ``engine_window``, one engine segment after the other (see ``_segments``).
    """
    out = Handoff(plan, ctx, writer)
    constants = {k: v for k, v in inputs.items() if k not in map_over}
    batches, total = map_batches(inputs, map_over, map_mode, batch_size)
    constant_keys = keys_of_constants(constants, ctx.cache is not None)
    skip = out.open(map_over)
    with out:  # from here on the writer is closed, and the end reported, whatever happens
        out.start(total, batch_size, skip)
        numbered = _numbered(batches, skip, out.result)
        segments = plan_segments(plan, ctx.settings)
        if segments is None:

            def task(seq: int, indices: list[int], batch: _Batch) -> BatchTask:
                columns = dict(zip(map_over, batch))
                return BatchTask(
                    plan, columns, constants, indices, ctx.settings, ctx.local,
                    seq=seq, constant_keys=constant_keys,
                )  # fmt: skip

            yield from _in_order(numbered, _Direct(task, out), in_flight)
            return out.result
        schedule = Schedule(segments, plan, map_over, constants, constant_keys, ctx, out)
        with spill_folder(writer) as folder:
            for carries, stage in schedule.passes(numbered, engine_window, folder):
                yield from _in_order(carries, stage, in_flight)
    return out.result


class Stage(Protocol[J]):
    """Where the map loop's batches go. ``begin`` makes a batch's task (None: nothing to
    run, the stage took the batch as it is), ``done`` takes the task back finished,
    ``flush`` hands on what is due in input order; ``waiting`` batches are done but held
    (they count against the in-flight window), ``due``: one of them can go now."""

    def begin(self, job: J) -> BatchTask | None: ...

    def done(self, task: BatchTask) -> None: ...

    def flush(self) -> MapFlow[None]: ...

    @property
    def waiting(self) -> int: ...

    @property
    def due(self) -> bool: ...


class _Direct:
    """A plain map's stage: each batch one task of the whole plan, handed to ``out``."""

    def __init__(self, make: Callable[[int, list[int], _Batch], BatchTask], out: Handoff) -> None:
        self.make = make
        self.out = out
        self._first: dict[int, int] = {}  # in flight: the index of each one's first item
        self._seq = 0

    def begin(self, job: tuple[int, list[int], _Batch]) -> BatchTask | None:
        first, indices, batch = job
        seq, self._seq = self._seq, self._seq + 1
        if not indices:  # every item of the batch was stored by an earlier run
            self.out.done(seq, first, None)
            return None
        self._first[seq] = first
        return self.make(seq, indices, batch)

    def done(self, task: BatchTask) -> None:
        self.out.done(task.seq, self._first.pop(task.seq), task)

    def flush(self) -> MapFlow[None]:
        return self.out.flush()

    @property
    def waiting(self) -> int:
        return self.out.waiting

    @property
    def due(self) -> bool:
        return self.out.due


def _in_order(jobs: Iterator[J], stage: Stage[J], in_flight: int) -> MapFlow[None]:
    """The map loop: keep up to ``in_flight`` batches out (in flight, or done and held by
    ``stage`` for an earlier one); each batch read becomes the stage's task."""
    pending: set[int] = set()  # in flight, by sequence number
    exhausted = False
    while True:
        yield from stage.flush()  # hand on what is done, in input order, before reading on
        new: list[BatchTask] = []
        while not exhausted and len(pending) + stage.waiting < in_flight:
            job = next(jobs, None)
            if job is None:
                exhausted = True
            elif (task := stage.begin(job)) is not None:
                new.append(task)
                pending.add(task.seq)
        if not new and not pending:
            if stage.due:
                continue  # batches skipped whole are still to be reported
            break
        finished = yield new
        assert finished is not None  # work is answered with the pieces that finished
        for done in finished:
            assert isinstance(done, BatchTask)
            pending.discard(done.seq)
            if done.error is not None:
                raise done.error
            stage.done(done)


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


def _unstored(
    indices: list[int], batch: _Batch, skip: Container[int], result: MapResult
) -> tuple[list[int], _Batch]:
    """The batch less the items an earlier run stored (counted as skipped)."""
    keep = [pos for pos, i in enumerate(indices) if i not in skip]
    result.n_skipped += len(indices) - len(keep)
    if len(keep) == len(indices):
        return indices, batch
    return [indices[pos] for pos in keep], [[col[pos] for pos in keep] for col in batch]


def normalize_map_over(map_over: str | Iterable[str]) -> tuple[str, ...]:
    return (map_over,) if isinstance(map_over, str) else tuple(map_over)
