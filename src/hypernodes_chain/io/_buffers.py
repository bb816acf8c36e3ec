"""Row buffers that become one shard: JSON lines, or columns for a parquet table.

Both take flat rows (``_index`` first) and keep at most one shard's worth of them. The
parquet buffer stores columns, not row dicts, and holds the schema that every shard of the
folder keeps (see ``ParquetBuffer``).
"""

from __future__ import annotations

import array
import base64
import json
from collections.abc import Callable
from operator import itemgetter
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ._flatten import json_default, to_plain

__all__ = ["JsonlBuffer", "ParquetBuffer", "dumps"]

# One encoder for every row: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=json_default)
dumps = _ENCODER.encode
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

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self.indices.extend(map(itemgetter("_index"), rows))
        self._lines.extend(map(_ENCODER.encode, rows))
        types, typed = self._types, self._typed
        for row in rows:
            if row.keys() <= typed:  # the usual row: every column's type already known
                continue
            for key, value in row.items():
                if types.get(key) is None:
                    types[key] = None if value is None else _json_type(value)
                    if value is not None:
                        typed.add(key)

    def freeze(self) -> Callable[[IO[bytes]], object]:
        """The buffered rows as a function that writes them to a file."""
        data = ("\n".join(self._lines) + "\n").encode()
        return lambda f: f.write(data)

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
    """Columns of python values turned into one parquet table per shard.

    Schema policy: a column's type is inferred from its first non-null values and then kept
    for every later shard. A column that was all null so far (type ``null``, also nested as in
    ``list<null>``) takes its type when a later shard knows it; ints fit a float column. A
    value that fits neither raises ``TypeError`` naming the column, the item and both types.
    A column first seen in a later shard is added at the end of the schema; a known column
    missing from a shard is written as nulls, so every shard has every column seen before it.
    """

    suffix = "parquet"

    def __init__(self) -> None:
        self._cols: dict[str, list[Any]] = {}
        self._n = 0
        self._types: dict[str, pa.DataType] = {}

    def __len__(self) -> int:
        return self._n

    @property
    def indices(self) -> list[int]:
        return self._cols.get("_index", [])

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append rows: as whole columns when they share their keys, else one by one."""
        first = rows[0].keys() if rows else None
        if first is not None and all(row.keys() == first for row in rows):
            self.extend({key: list(map(itemgetter(key), rows)) for key in first}, len(rows))
        else:
            for row in rows:
                self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        n = self._n
        cols = self._cols
        for key, value in row.items():
            col = cols.get(key)
            if col is None:
                cols[key] = col = [None] * n
            elif len(col) != n:  # the key was missing from some earlier rows
                col.extend([None] * (n - len(col)))
            col.append(value)
        self._n = n + 1

    def extend(self, columns: dict[str, list[Any]], n: int) -> None:
        """Append ``n`` rows given as columns (every list of length ``n``)."""
        cols, have = self._cols, self._n
        for key, values in columns.items():
            col = cols.get(key)
            if col is None:
                cols[key] = col = [None] * have
            elif len(col) != have:
                col.extend([None] * (have - len(col)))
            col.extend(values)
        self._n = have + n

    def clear(self) -> None:
        self._cols, self._n = {}, 0

    def freeze(self) -> Callable[[IO[bytes]], object]:
        """The buffered rows as a function that writes them; raises if a value misfits."""
        table = self.table()
        return lambda f: pq.write_table(table, f)

    def table(self) -> pa.Table:
        """The buffered rows under the folder's schema (which this may extend or refine)."""
        n, types = self._n, dict(self._types)
        names = list(types) + [k for k in self._cols if k not in types]
        arrays = []
        for name in names:
            values = self._cols.get(name) or [None] * n
            if len(values) != n:
                values.extend([None] * (n - len(values)))
            arr = self._array(name, values, types.get(name))
            types[name] = arr.type
            arrays.append(arr)
        table = pa.Table.from_arrays(arrays, names=names)
        self._types = types  # committed only once every column fitted
        return table

    def _array(self, name: str, values: list[Any], known: pa.DataType | None) -> pa.Array:
        try:
            arr = _numeric_array(values) or pa.array(values)
        except _ARROW_ERRORS:
            try:
                arr = pa.array([to_plain(v) for v in values])
            except _ARROW_ERRORS:
                raise self._misfit(name, values, known) from None
        if known is None or arr.type == known:
            return arr
        try:
            merged = (
                pa.unify_schemas(
                    [pa.schema([("c", known)]), pa.schema([("c", arr.type)])],
                    promote_options="default",
                )
                .field("c")
                .type
            )
            return arr.cast(merged)  # null -> T, list<null> -> list<T>, ...
        except _ARROW_ERRORS:
            pass
        if pa.types.is_integer(arr.type) and pa.types.is_floating(known):
            try:
                return arr.cast(known, safe=True)
            except _ARROW_ERRORS:
                pass
        raise self._misfit(name, values, known)

    def _misfit(self, name: str, values: list[Any], known: pa.DataType | None) -> TypeError:
        indices = self.indices
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                got = pa.array([to_plain(value)]).type
            except _ARROW_ERRORS:
                got = None
            if known is None:
                known = got
                continue
            if got is None or (got != known and not _fits(got, known)):
                got_text = (
                    f"{type(value).__name__} (arrow type {got})" if got else type(value).__name__
                )
                msg = (
                    f"parquet column {name!r}, item {indices[i]}: value {_short(value)} of type "
                    f"{got_text} does not fit the column's type {known}, inferred from earlier "
                    f"values. Return one type for every item (e.g. float(...)), or use "
                    f"format='jsonl'."
                )
                return TypeError(msg)
        return TypeError(f"parquet column {name!r}: values do not fit the type {known}")

    def schema_json(self) -> dict[str, Any]:
        schema = pa.schema(list(self._types.items()))
        return {
            "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
            "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode(),
        }

    def restore(self, schema: dict[str, Any]) -> None:
        if "arrow" in schema:
            raw = base64.b64decode(schema["arrow"])
            self._types = {f.name: f.type for f in pa.ipc.read_schema(pa.py_buffer(raw))}


def _numeric_array(values: list[Any]) -> pa.Array | None:
    """Plain int or float columns without nulls, built from a C buffer.

    Faster than ``pa.array``'s inference, and it does not make pyarrow import pandas (which
    ``pa.array`` does on its first call when pandas is installed: ~50 MB and half a second).
    """
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


def _fits(got: pa.DataType, known: pa.DataType) -> bool:
    if pa.types.is_integer(got) and pa.types.is_floating(known):
        return True
    try:
        pa.unify_schemas([pa.schema([("c", known)]), pa.schema([("c", got)])])
    except _ARROW_ERRORS:
        return False
    return True


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
