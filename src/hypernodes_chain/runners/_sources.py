"""Map inputs from the libraries users hold data in, as plain Python values, lazily.

A ``map_over`` input may be a pyarrow ``Array`` / ``ChunkedArray``, a numpy array, a pandas
or polars ``Series``, or anything iterable; nodes get Python values (``str``, ``int``, ...),
never library scalars, converted a slice at a time. ``inputs`` itself may be a table: a
pyarrow ``Table``, ``RecordBatchReader`` or ``Dataset``, a pandas or polars ``DataFrame``,
a Hugging Face ``Dataset`` or ``IterableDataset``; its columns named in ``map_over`` are the
map inputs (other columns are ignored). Streamed kinds (a reader, a dataset scan, an
iterable dataset) are read once, batch by batch, whatever the number of columns mapped
(`Lockstep`), so memory stays O(batch). No library is imported here: objects are recognised
by their type's module and duck-typed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._columns import Lockstep, arrow_batches, row_batches

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
        return Lockstep(arrow_batches(source, map_over), map_over).iterators()
    if library == "datasets" and kind == "IterableDataset":
        present = list(inputs.column_names or [])
        if present:
            _check(map_over, present, kind)
        return Lockstep(row_batches(inputs, map_over, SLICE), map_over).iterators()
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
