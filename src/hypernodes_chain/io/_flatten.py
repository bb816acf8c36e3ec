"""Turning one item's values into the flat columns of a row, and into JSON.

Flattening rule: a dict, a dataclass instance or a pydantic (v2) model under the name
``summary`` becomes one column per field, ``summary.title``, ``summary.score``; nested
structured values continue the dotted path (``summary.meta.source``). Anything else (scalars,
lists, arrays, dates) is one column as it is. Pydantic is detected by its ``model_dump``
method, so this module never imports pydantic.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["flatten_columns", "flatten_into", "json_default", "to_plain"]

# Values of these exact types are stored as they are: the hot path of a million-row map.
_PLAIN = frozenset({int, float, str, bool, type(None), bytes})

# A self-referencing dict must not recurse forever: past this depth a value is kept whole.
_MAX_DEPTH = 32


def _is_pydantic(value: object) -> bool:
    return not isinstance(value, type) and callable(getattr(type(value), "model_dump", None))


def _fields(value: object) -> Mapping[Any, Any] | None:
    """The named fields of a structured value, or None when it is not one."""
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if _is_pydantic(value):
        dumped = value.model_dump()  # type: ignore[attr-defined]
        return dumped if isinstance(dumped, Mapping) else None
    return None


def flatten_into(row: dict[str, Any], name: str, value: object, depth: int = 0) -> None:
    """Store ``value`` in ``row`` under ``name``, one dotted column per structured field.

    An empty dict (or a dataclass without fields) adds no column. Two values that flatten
    to one column name (an output ``a`` holding key ``b`` beside an output ``a.b``) raise
    ``ValueError`` naming the column: one of them would be lost otherwise.
    """
    if type(value) in _PLAIN or depth >= _MAX_DEPTH:
        _put(row, name, value)
        return
    fields = _fields(value)
    if fields is None:
        _put(row, name, value)
        return
    for key, sub in fields.items():
        flatten_into(row, f"{name}.{key}", sub, depth + 1)


def _put(row: dict[str, Any], name: str, value: object) -> None:
    if name in row:
        msg = (
            f"two values flatten to the column {name!r} (a dict key or field with a dot, "
            f"or an output named like a flattened field); rename one of them, or pass "
            f"flatten=False"
        )
        raise ValueError(msg)
    row[name] = value


def flatten_columns(
    columns: Mapping[str, Sequence[Any]], depth: int = 0
) -> dict[str, Sequence[Any]] | None:
    """Whole columns flattened at once: a column of plain dicts sharing the same keys
    becomes one column per key (recursively), as `flatten_into` would do row by row.

    None when a column holds anything else that needs flattening (dataclasses, models,
    dicts with differing keys): the caller then takes the row path.
    """
    out: dict[str, Sequence[Any]] = {}
    for name, values in columns.items():
        types = set(map(type, values))
        if name in out:
            return None  # a collision: the row path names it, item by item
        if types <= _PLAIN:
            out[name] = values
            continue
        if types != {dict} or depth >= _MAX_DEPTH:
            return None
        keys = tuple(values[0])
        if any(tuple(v) != keys for v in values):
            return None
        nested = flatten_columns({f"{name}.{k}": [v[k] for v in values] for k in keys}, depth + 1)
        if nested is None or out.keys() & nested.keys():
            return None
        out.update(nested)
    return out


def to_plain(value: object, depth: int = 0) -> Any:
    """Dataclasses and pydantic models (also inside dicts and lists) turned into dicts."""
    if type(value) in _PLAIN or depth >= _MAX_DEPTH:
        return value
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value]
    fields = _fields(value)
    if fields is None:
        return value
    return {str(k): to_plain(v, depth + 1) for k, v in fields.items()}


def json_default(value: object) -> Any:
    """``json.dumps`` fallback: what JSON cannot encode natively.

    Dataclasses and pydantic models become objects, sets and tuples arrays, numpy arrays and
    scalars their ``tolist()``, dates and times ISO 8601 strings. Anything else raises
    ``TypeError`` (never a silent ``str(value)``, which would store ``<Thing object at 0x..>``).
    """
    fields = _fields(value)
    if fields is not None:
        return {str(k): v for k, v in fields.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    msg = f"Object of type {type(value).__name__} is not JSON serializable"
    raise TypeError(msg)
