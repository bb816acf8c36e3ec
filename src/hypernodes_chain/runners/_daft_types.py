"""Daft dtypes of a graph's outputs, and the struct column ``map_dataframe`` returns.

A column's dtype comes from the annotation of the node that produces it, as Daft reads
return annotations: ``int`` is Int64, a pydantic model or a `TypedDict` a struct, ``list[T]``
a list, ``dict[K, V]`` a map; an unannotated (or ``Any``) output, or one Daft cannot type,
holds Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from .._optional import optional
from ..plan import Plan

__all__ = ["daft", "output_dtype", "output_struct", "struct_series"]


def daft() -> Any:
    """The daft module (extra ``daft``)."""
    return optional("daft", "DaftRunner", "daft")


def output_dtype(annotation: object) -> Any:
    """The Daft dtype of a value annotated ``annotation`` (Python objects if unknown)."""
    dtype = daft().DataType
    if annotation is Any or annotation is None:
        return dtype.python()
    try:
        return dtype.infer_from_type(annotation)
    except Exception:  # Optional[...], unions, unknown classes: kept as Python objects
        return dtype.python()


def _plain(arrow: pa.DataType) -> bool:
    """Whether an Arrow type holds no Python objects (Daft's extension type) anywhere."""
    if isinstance(arrow, pa.ExtensionType):
        return False
    if pa.types.is_struct(arrow):
        return all(_plain(arrow.field(i).type) for i in range(arrow.num_fields))
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        return _plain(arrow.value_type)
    if pa.types.is_map(arrow):
        return _plain(arrow.key_type) and _plain(arrow.item_type)
    return True


def output_struct(plan: Plan) -> tuple[Any, pa.StructType | None]:
    """The struct of the plan's outputs (one field each, in order) and its Arrow type, or
    None for the Arrow type when a field holds Python objects."""
    types = {o: s.node.output_type(o) for s in plan.steps for o in s.node.outputs}
    fields = {o: output_dtype(types[o]) for o in plan.outputs}
    struct = daft().DataType.struct(fields)
    arrow = struct.to_arrow_dtype()
    return struct, arrow if _plain(arrow) else None


def struct_series(
    outputs: Sequence[str],
    dtype: Any,
    arrow: pa.StructType | None,
    columns: list[list[object]],
    n: int,
) -> Any:
    """One struct Series (of type ``dtype``, ``arrow`` in Arrow where plain) from the output
    columns: built in Arrow when every value fits its field, else by Daft from rows
    (pydantic models, tuples and Python objects)."""
    series = daft().Series
    if arrow is not None:
        try:
            arrays = [pa.array(col, type=arrow.field(i).type) for i, col in enumerate(columns)]
            return series.from_arrow(pa.StructArray.from_arrays(arrays, fields=list(arrow)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            pass
    rows = [dict(zip(outputs, row)) for row in zip(*columns)] if columns else [{}] * n
    return series.from_pylist(rows, dtype=dtype)
