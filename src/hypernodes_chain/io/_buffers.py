"""Row buffers that become one shard: JSON lines, or Arrow columns for a parquet table.

Both take flat rows (``_index`` first) and keep at most one shard's worth of them. A batch
is checked when it is added, not when the shard is written: an item whose value cannot be
stored (NaN or an unknown object in JSON, a value that misfits its parquet column) is
handed back as ``(index, error)`` and left out, so it becomes that item's failure while the
other items go on. Adding a batch changes the buffer only once every row is encoded.
"""

from __future__ import annotations

import array
import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..exceptions import _Misfit
from ._flatten import json_default, to_plain

__all__ = ["JsonlBuffer", "ParquetBuffer", "Rejected", "dumps", "dumps_lenient"]

Rejected = list[tuple[int, Exception]]  # (item index, why it cannot be stored)

# One encoder for every row: ``json.dumps`` with options builds a new one per call.
# Strict: NaN and infinities are not JSON (duckdb, polars and jq reject them).
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=json_default, allow_nan=False)
dumps = _ENCODER.encode
# For error records only, which must always be written: anything goes, through repr.
_LENIENT = json.JSONEncoder(ensure_ascii=False, default=repr)
dumps_lenient = _LENIENT.encode
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_error(row: Mapping[str, Any]) -> Exception:
    """Why one row cannot be JSON, naming its column."""
    index = row.get("_index")
    for key, value in row.items():
        try:
            _ENCODER.encode(value)
        except ValueError:
            return ValueError(
                f"jsonl column {key!r}, item {index}: {_short(value)} holds NaN or an "
                f"infinity, which JSON cannot hold; return None or a finite number, or use "
                f"format='parquet', which stores them"
            )
        except TypeError as exc:
            return TypeError(
                f"jsonl column {key!r}, item {index}: {_short(value)} cannot be written as "
                f"JSON ({exc}); return plain values (str, numbers, lists, dicts), a dataclass "
                f"or a pydantic model"
            )
    return ValueError(f"item {index}: the row cannot be written as JSON")


class JsonlBuffer:
    """One JSON object per line; values JSON cannot encode go through ``json_default``."""

    suffix = "jsonl"

    def __init__(self) -> None:
        self._lines: list[str] = []
        self.indices: list[int] = []
        self._types: dict[str, str | None] = {}  # column -> JSON type of its first non-null
        self._typed: set[str] = set()  # the columns whose type is known

    def __len__(self) -> int:
        return len(self._lines)

    def add_rows(self, rows: list[dict[str, Any]]) -> Rejected:
        """Encode the rows, then add them; rows that are not valid JSON are handed back."""
        rejected: Rejected = []
        try:
            lines = list(map(_ENCODER.encode, rows))
        except (ValueError, TypeError, RecursionError):
            lines, kept = [], []
            for row in rows:
                try:
                    lines.append(_ENCODER.encode(row))
                    kept.append(row)
                except (ValueError, TypeError, RecursionError):
                    rejected.append((row["_index"], _json_error(row)))
            rows = kept
        indices = list(map(itemgetter("_index"), rows))
        self._lines.extend(lines)
        self.indices.extend(indices)
        types, typed = self._types, self._typed
        for row in rows:
            if row.keys() <= typed:  # the usual row: every column's type already known
                continue
            for key, value in row.items():
                if types.get(key) is None:
                    types[key] = None if value is None else _json_type(value)
                    if value is not None:
                        typed.add(key)
        return rejected

    def freeze(self) -> bytes:
        """The buffered rows as the bytes of one shard."""
        return ("\n".join(self._lines) + "\n").encode()

    def clear(self) -> None:
        self._lines, self.indices = [], []

    def schema_json(self) -> dict[str, Any]:
        return {"columns": [{"name": k, "type": t or "null"} for k, t in self._types.items()]}

    def restore(self, schema: dict[str, Any]) -> None:
        for column in schema.get("columns", []):
            known = None if column["type"] == "null" else column["type"]
            self._types[column["name"]] = known
            if known is not None:
                self._typed.add(column["name"])


class ParquetBuffer:
    """Columns turned into Arrow arrays batch by batch, written as one parquet table a shard.

    Schema policy: with a declared ``schema`` every column has its declared type (and a
    column it does not declare is an error). Otherwise a column's type is inferred from its
    first non-null values and then kept for every later shard. A column that was all null so
    far (type ``null``, also nested as in ``list<null>``) takes its type when a later batch
    knows it; ints fit a float column. A value that fits neither is its item's rejection,
    naming the column, the item and both types. A column first seen later is added at the
    end of the schema; a known column missing from a batch is written as nulls.
    """

    suffix = "parquet"

    def __init__(self, schema: pa.Schema | None = None) -> None:
        self._declared: dict[str, pa.DataType] | None = (
            None if schema is None else {f.name: f.type for f in schema}
        )
        self._types: dict[str, pa.DataType] = dict(self._declared or {})
        self._chunks: list[tuple[int, dict[str, pa.Array]]] = []
        self._n = 0
        self.indices: list[int] = []

    def __len__(self) -> int:
        return self._n

    def add_rows(self, rows: list[dict[str, Any]]) -> Rejected:
        """Add rows (their keys may differ: a key missing from a row is null there)."""
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        columns = {key: [row.get(key) for row in rows] for key in keys}
        return self.extend(columns, len(rows))

    def extend(self, columns: Mapping[str, Sequence[Any]], n: int) -> Rejected:
        """Add ``n`` rows given as columns (every list of length ``n``, ``_index`` first)."""
        if n == 0:
            return []
        types = dict(self._types)
        arrays: dict[str, pa.Array] = {}
        bad: dict[int, Exception] = {}
        for name, values in columns.items():
            try:
                arrays[name] = arr = self._array(name, values, types.get(name))
                types[name] = arr.type
            except _Misfit:
                bad.update(self._misfits(name, values, types.get(name), columns["_index"]))
        if bad:
            indices = columns["_index"]
            rejected: Rejected = [(indices[pos], exc) for pos, exc in sorted(bad.items())]
            keep = [pos for pos in range(n) if pos not in bad]
            rest = {k: [v[pos] for pos in keep] for k, v in columns.items()}
            return rejected + self.extend(rest, len(keep))
        self._types = types  # every column fitted: now the buffer changes
        self._chunks.append((n, arrays))
        self.indices.extend(columns["_index"])
        self._n += n
        return []

    def clear(self) -> None:
        self._chunks, self._n, self.indices = [], 0, []

    def freeze(self) -> bytes:
        """The buffered rows as the bytes of one parquet file, under the folder's schema."""
        schema = pa.schema(list(self._types.items()))
        batches = []
        for n, arrays in self._chunks:
            columns = []
            for field in schema:
                arr = arrays.get(field.name)
                if arr is None:
                    arr = pa.nulls(n, field.type)
                elif arr.type != field.type:
                    arr = arr.cast(field.type)  # null -> T, list<null> -> list<T>, int -> float
                columns.append(arr)
            batches.append(pa.RecordBatch.from_arrays(columns, schema=schema))
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_batches(batches, schema=schema), sink)
        return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]

    def table(self) -> pa.Table:
        """The buffered rows as a table (for tests and tools)."""
        return pq.read_table(pa.py_buffer(self.freeze()))

    def _array(self, name: str, values: Sequence[Any], known: pa.DataType | None) -> pa.Array:
        declared = self._declared
        if declared is not None:
            if name not in declared:
                msg = (
                    f"column {name!r} is not in the StreamWriter's declared schema (columns: "
                    f"{', '.join(declared)}); add it to the schema or leave schema=None"
                )
                raise ValueError(msg)
            try:
                return pa.array(values, type=known)
            except _ARROW_ERRORS:
                try:
                    return pa.array([to_plain(v) for v in values], type=known)
                except _ARROW_ERRORS:
                    raise _Misfit from None
        try:
            arr = _numeric_array(values) or pa.array(values)
        except _ARROW_ERRORS:
            try:
                arr = pa.array([to_plain(v) for v in values])
            except _ARROW_ERRORS:
                raise _Misfit from None
        if known is None or arr.type == known:
            return arr
        try:
            merged = pa.unify_schemas(
                [pa.schema([("c", known)]), pa.schema([("c", arr.type)])],
                promote_options="default",
            ).field("c").type  # fmt: skip
            return arr.cast(merged)
        except _ARROW_ERRORS:
            pass
        if pa.types.is_integer(arr.type) and pa.types.is_floating(known):
            try:
                return arr.cast(known, safe=True)
            except _ARROW_ERRORS:
                pass
        raise _Misfit

    def _misfits(
        self, name: str, values: Sequence[Any], known: pa.DataType | None, indices: Sequence[int]
    ) -> dict[int, Exception]:
        """The positions whose value misfits the column (the first fitting value sets an
        unknown type), each with an error that names the column, item and types."""
        bad: dict[int, Exception] = {}
        how = "declared" if self._declared is not None else "inferred from earlier values"
        for pos, value in enumerate(values):
            if value is None:
                continue
            try:
                arr = self._array(name, [value], known)
            except _Misfit:
                bad[pos] = TypeError(
                    f"parquet column {name!r}, item {indices[pos]}: value {_short(value)} of "
                    f"type {type(value).__name__}{_arrow_type(value)} does not fit the "
                    f"column's type {known} ({how}). Return one type for every item "
                    f"(e.g. float(...)), declare StreamWriter(schema=...), or use "
                    f"format='jsonl'."
                )
                continue
            if (known is None or pa.types.is_null(known)) and not pa.types.is_null(arr.type):
                known = arr.type
        return bad

    def schema_json(self) -> dict[str, Any]:
        schema = pa.schema(list(self._types.items()))
        return {
            "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
            "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode(),
        }

    def restore(self, schema: dict[str, Any]) -> None:
        if "arrow" in schema and self._declared is None:
            raw = base64.b64decode(schema["arrow"])
            self._types = {f.name: f.type for f in pa.ipc.read_schema(pa.py_buffer(raw))}


def _arrow_type(value: object) -> str:
    try:
        return f" (arrow type {pa.array([to_plain(value)]).type})"
    except _ARROW_ERRORS:
        return ""


def _numeric_array(values: Iterable[Any]) -> pa.Array | None:
    """Plain int or float columns without nulls, built from a C buffer.

    Faster than ``pa.array``'s inference, and it does not make pyarrow import pandas (which
    ``pa.array`` does on its first call when pandas is installed: ~50 MB and half a second).
    """
    values = values if isinstance(values, list) else list(values)
    kinds = set(map(type, values))
    try:
        if kinds == {int}:
            return pa.Array.from_buffers(pa.int64(), len(values), [None, _buf("q", values)])
        if kinds and kinds <= {int, float}:
            return pa.Array.from_buffers(pa.float64(), len(values), [None, _buf("d", values)])
    except OverflowError:  # an int beyond 64 bits: let pa.array say so
        return None
    return None


def _buf(code: str, values: list[Any]) -> pa.Buffer:
    return pa.py_buffer(array.array(code, values))
