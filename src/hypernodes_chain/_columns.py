"""One pass over a stream of batches, split into one lazy iterator per column.

A map takes a batch from each of its columns in turn. When the columns come from one
stream (the row batches of a table reader, the records of a jsonl file, a Daft query),
`Lockstep` reads the stream once, only as far as the column furthest ahead: each column
keeps in a queue the values the others have read and it has not, so memory stays about
one batch of the stream. A column that runs further ahead than ``limit`` values means the
columns are not consumed in step, and is an error rather than unbounded memory.

Batches are mappings of column name to values; `row_batches` and `arrow_batches` make them
from rows and from pyarrow record batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["Lockstep", "LockstepColumn", "arrow_batches", "row_batches"]

Batch = Mapping[str, Iterable[Any]]


class Lockstep:
    """One read of ``batches``, shared by one lazy iterator per name in ``names``.

    ``source`` names the stream in errors; ``limit`` bounds the values waiting in one
    column (None: unbounded). ``peak`` is the most values ever waiting in one column.
    """

    def __init__(
        self,
        batches: Iterable[Batch],
        names: Sequence[str],
        *,
        source: str = "the input",
        limit: int | None = None,
    ) -> None:
        self._batches = iter(batches)
        self._queues = {name: deque[Any]() for name in names}
        self._source = source
        self._limit = limit
        self._done = False
        self._started: set[str] = set()
        self.peak = 0

    def iterators(self) -> dict[str, Iterator[Any]]:
        """``{name: lazy iterator of its values}`` for every column."""
        return {name: self.values(name) for name in self._queues}

    def column(self, name: str, length: Callable[[], int] | None = None) -> LockstepColumn:
        """Column ``name`` as an iterable, whose ``len()`` is ``length()`` when given."""
        return LockstepColumn(self, name, length)

    def values(self, name: str) -> Iterator[Any]:
        """The values of column ``name``, reading the stream as far as they need."""
        if name in self._started:
            msg = f"column {name!r} of {self._source} can be iterated only once"
            raise RuntimeError(msg)
        self._started.add(name)
        queue = self._queues[name]
        popleft = queue.popleft
        while True:
            while queue:
                yield popleft()
            if not self._pull():
                return

    def _pull(self) -> bool:
        """Read one more batch into the queues; False once the stream is done."""
        if self._done:
            return False
        batch = next(self._batches, None)
        if batch is None:
            self._done = True
            return False
        for name, queue in self._queues.items():
            queue.extend(batch[name])
        longest = max(map(len, self._queues.values()), default=0)
        self.peak = max(self.peak, longest)
        if self._limit is not None and longest > self._limit:
            msg = (
                f"the columns of {self._source} are not consumed in step (over {self._limit} "
                f"values buffered); use map_mode='zip'"
            )
            raise RuntimeError(msg)
        return True


class LockstepColumn(Iterable[Any]):
    """One column of a `Lockstep` stream, with a ``len()`` when its length is known."""

    def __init__(self, stream: Lockstep, name: str, length: Callable[[], int] | None) -> None:
        self._stream, self._name, self._length = stream, name, length

    def __iter__(self) -> Iterator[Any]:
        return self._stream.values(self._name)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("length unknown")
        return self._length()


def row_batches(
    rows: Iterable[Any],
    names: Sequence[str],
    size: int,
    bad: Callable[[Any, int], Exception] | None = None,
) -> Iterator[dict[str, list[Any]]]:
    """``rows`` (mappings) as batches of up to ``size`` rows, the ``names`` columns of each.

    A row without one of the fields raises its KeyError or TypeError, or ``bad(row, index)``
    when given.
    """
    chunk: dict[str, list[Any]] = {name: [] for name in names}
    n = 0
    for index, row in enumerate(rows):
        try:
            values = [row[name] for name in names]
        except (KeyError, TypeError):
            if bad is None:
                raise
            raise bad(row, index) from None
        for name, value in zip(names, values):
            chunk[name].append(value)
        n += 1
        if n == size:
            yield chunk
            chunk, n = {name: [] for name in names}, 0
    if n:
        yield chunk


def arrow_batches(batches: Iterable[Any], names: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    """pyarrow record batches (or anything with ``.column(name).to_pylist()``) as batches
    of Python values."""
    for batch in batches:
        yield {name: batch.column(name).to_pylist() for name in names}
