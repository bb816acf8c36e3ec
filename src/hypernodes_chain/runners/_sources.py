"""Map inputs from the libraries users hold data in, as plain Python values, lazily.

A ``map_over`` input may be a pyarrow ``Array`` / ``ChunkedArray``, a numpy array, a pandas
or polars ``Series``, or anything iterable; nodes get Python values (``str``, ``int``, ...),
never library scalars, converted a slice at a time. ``inputs`` itself may be a table: a
pyarrow ``Table``, ``RecordBatchReader`` or ``Dataset``, a pandas or polars ``DataFrame``,
a Hugging Face ``Dataset`` or ``IterableDataset``; its columns named in ``map_over`` are the
map inputs (other columns are ignored). Streamed kinds (a reader, a dataset scan, an
iterable dataset) are read once, batch by batch, whatever the number of columns mapped, so
memory stays O(batch). No library is imported here: objects are recognised by their type's
module and duck-typed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["as_column", "as_inputs"]

SLICE = 65_536  # values converted at a time


def _library(obj: object) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _slices(n: int, convert: Any) -> Iterator[Any]:
    for start in range(0, n, SLICE):
        yield from convert(start, min(n, start + SLICE))


def as_column(values: Any) -> Any:
    """``values`` as something that yields Python values (itself when it already does)."""
    library = _library(values)
    if library == "pyarrow":
        chunks = getattr(values, "chunks", None)
        if chunks is not None:  # ChunkedArray: chunk by chunk, each a slice at a time
            return _Sized(len(values), (v for chunk in chunks for v in as_column(chunk)))
        if hasattr(values, "to_pylist"):  # Array
            n = len(values)
            return _Sized(n, _slices(n, lambda a, b: values.slice(a, b - a).to_pylist()))
    elif library == "numpy" and hasattr(values, "tolist") and getattr(values, "ndim", 0) >= 1:
        n = len(values)
        return _Sized(n, _slices(n, lambda a, b: values[a:b].tolist()))
    elif library == "pandas" and hasattr(values, "iloc"):  # Series
        n = len(values)
        return _Sized(n, _slices(n, lambda a, b: values.iloc[a:b].tolist()))
    elif library == "polars" and hasattr(values, "to_list") and hasattr(values, "slice"):
        n = len(values)
        return _Sized(n, _slices(n, lambda a, b: values.slice(a, b - a).to_list()))
    return values


class _Sized:
    """An iterator that knows its length (so a map knows its total)."""

    __slots__ = ("_it", "_n")

    def __init__(self, n: int, it: Iterator[Any]) -> None:
        self._n = n
        self._it = it

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return self._it


class _Stream:
    """One pass over a table's batches, shared by the iterators of its columns: each
    column buffers only what the others have read ahead of it."""

    def __init__(self, batches: Iterator[Mapping[str, Sequence[Any]]], names: Sequence[str]):
        self._batches = batches
        self._queues: dict[str, deque[Any]] = {name: deque() for name in names}

    def _pull(self) -> bool:
        for batch in self._batches:
            for name, queue in self._queues.items():
                queue.extend(batch[name])
            return True
        return False

    def column(self, name: str) -> Iterator[Any]:
        queue = self._queues[name]
        while True:
            while not queue:
                if not self._pull():
                    return
            yield queue.popleft()


def _arrow_batches(batches: Iterable[Any], names: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    for batch in batches:
        yield {name: batch.column(name).to_pylist() for name in names}


def _row_batches(rows: Iterable[Mapping[str, Any]], names: Sequence[str]) -> Iterator[Any]:
    chunk: dict[str, list[Any]] = {name: [] for name in names}
    n = 0
    for row in rows:
        for name in names:
            chunk[name].append(row[name])
        n += 1
        if n == SLICE:
            yield chunk
            chunk, n = {name: [] for name in names}, 0
    if n:
        yield chunk


def _columns_of(table: Any, library: str) -> list[str] | None:
    names = getattr(table, "column_names", None)  # pyarrow, Hugging Face
    if names is None and library in ("pandas", "polars"):
        names = getattr(table, "columns", None)
    return [str(n) for n in names] if names is not None else None


def as_inputs(inputs: Any, map_over: Sequence[str]) -> Mapping[str, Any]:
    """``inputs`` as a mapping: itself when it is one, else the ``map_over`` columns of the
    table it is (streamed where the table is)."""
    if isinstance(inputs, Mapping):
        return inputs
    library = _library(inputs)
    kind = type(inputs).__name__
    names = _columns_of(inputs, library)
    if library == "pyarrow" and kind in ("RecordBatchReader", "FileSystemDataset", "Dataset"):
        present = list(inputs.schema.names)
        _check(map_over, present, kind)
        source = (
            inputs if kind == "RecordBatchReader" else inputs.to_batches(columns=list(map_over))
        )
        stream = _Stream(_arrow_batches(source, map_over), map_over)
        return {name: stream.column(name) for name in map_over}
    if library == "datasets" and kind == "IterableDataset":
        present = list(inputs.column_names or [])
        if present:
            _check(map_over, present, kind)
        stream = _Stream(_row_batches(inputs, map_over), map_over)
        return {name: stream.column(name) for name in map_over}
    if names is not None and library in ("pyarrow", "pandas", "polars", "datasets"):
        _check(map_over, names, kind)
        return {name: inputs[name] for name in map_over}
    msg = (
        "map inputs must be a mapping of input names to values, or a table (pyarrow, "
        f"pandas, polars, Hugging Face datasets); got {type(inputs).__qualname__}"
    )
    raise TypeError(msg)


def _check(map_over: Sequence[str], present: Sequence[str], kind: str) -> None:
    missing = [name for name in map_over if name not in present]
    if missing:
        from ..exceptions import UnknownInputError

        msg = f"map_over names {missing}, which are not columns of the {kind}: {list(present)}"
        raise UnknownInputError(msg)
