"""Reading INPUTS for ``run``: the format, a lazy reader, its columns, and the columns to map.

A jsonl, parquet or csv file, or a folder of such shards, is read lazily. Parquet columns are
read one by one; the records of a jsonl or csv input are read once and split in lockstep into
one lazy iterator per column (`Lockstep`). Csv text is converted to the int, float or bool the
graph's nodes annotate. `choose_map_over` checks the columns against the graph's inputs and the
``--map-over`` and ``--set`` options.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard

from .._columns import Lockstep, row_batches
from ..exceptions import CliError, InputRecordError
from ._errors import one_line

__all__ = [
    "ShardFormat",
    "choose_map_over",
    "input_columns",
    "is_shard_format",
    "manifest_format",
    "map_inputs",
    "open_reader",
    "parse_sets",
]

ShardFormat = Literal["jsonl", "parquet"]
"""The formats a `StreamWriter` writes (and records in its ``_manifest.json``)."""

_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}


_READ = 256  # records read at a time from a jsonl or csv input


def is_shard_format(value: object) -> TypeGuard[ShardFormat]:
    return value in ("jsonl", "parquet")


def manifest_format(folder: Path) -> ShardFormat | None:
    """The shard format in ``folder/_manifest.json``; None without a readable, known one."""
    from ..io._manifest import find_manifest  # late: `inspect` needs no pyarrow

    try:
        manifest = find_manifest(folder)
    except (OSError, ValueError):
        return None
    fmt = manifest.format if manifest is not None else None
    return fmt if is_shard_format(fmt) else None


def _input_format(path: Path) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"csv"`` for a file (by suffix) or a folder of shards."""
    if path.is_file():
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            known = ", ".join(sorted(_FORMATS))
            raise CliError(f"cannot read {str(path)!r}: unknown suffix (expected one of {known})")
        return fmt
    if not path.is_dir():
        raise CliError(f"no such file or folder: {str(path)!r}")
    shard_format = manifest_format(path)  # a folder written by a StreamWriter
    if shard_format is not None:
        return shard_format
    found = {
        _FORMATS[p.suffix.lower()]
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in _FORMATS and not p.name.startswith((".", "_"))
    }
    if not found:
        raise CliError(f"folder {str(path)!r} holds no .jsonl, .parquet or .csv files")
    if len(found) > 1:
        raise CliError(
            f"folder {str(path)!r} mixes {' and '.join(sorted(found))} files; keep one format"
        )
    return found.pop()


def _csv_converters(graph: Any) -> dict[str, Callable[[str], Any]]:
    """Csv values are text: convert the columns every reader annotates as int, float or bool."""
    seen: dict[str, set[Any]] = {}
    for n in graph.nodes:
        for name in n.inputs:
            if name in graph.inputs or name in graph.optional_inputs:
                seen.setdefault(name, set()).add(n.input_type(name))
    out: dict[str, Callable[[str], Any]] = {}
    for name, types in seen.items():
        if len(types) == 1:
            tp = next(iter(types))
            if tp is bool:
                out[name] = _to_bool
            elif tp in (int, float):
                out[name] = tp
    return out


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "y", "t"):
        return True
    if low in ("0", "false", "no", "n", "f", ""):
        return False
    msg = f"not a boolean: {text!r}"
    raise ValueError(msg)


def open_reader(path: Path, graph: Any) -> tuple[str, Any]:
    """The format of ``path`` and a lazy reader of its records."""
    from ..io import read_csv, read_jsonl, read_parquet

    fmt = _input_format(path)
    try:
        if fmt == "parquet":
            return fmt, read_parquet(path)
        if fmt == "jsonl":
            return fmt, read_jsonl(path)
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        return fmt, read_csv(path, converters=_csv_converters(graph), delimiter=delimiter)
    except FileNotFoundError as exc:
        raise CliError(one_line(exc)) from exc


def input_columns(fmt: str, reader: Any) -> list[str] | None:
    """Field names of the input: the parquet schema, the csv header, the first jsonl record.

    None when the input holds no record to tell (an empty jsonl file).
    """
    if not reader.files:
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(reader.files[0]).names)
    if fmt == "csv":
        import csv

        with open(reader.files[0], newline="", encoding=reader.encoding) as f:
            header = next(csv.reader(f, **reader.fmtparams), None)
        return None if header is None else list(header)
    for record in reader:
        if not isinstance(record, dict):
            raise CliError(
                f"records of {str(reader.path)!r} must be JSON objects; "
                f"the first one is {type(record).__name__}"
            )
        return list(record)
    return None


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def map_inputs(
    fmt: str, reader: Any, names: Sequence[str], batch_size: int
) -> dict[str, Iterable[Any]]:
    """``{name: lazy column}`` for the fields in ``names``, reading the input once.

    The records of a jsonl or csv input are read 256 at a time; a column that runs more
    than about two batches ahead of the others is an error (`Lockstep`), as is a record
    that is not an object or lacks a field (`InputRecordError`).
    """
    if fmt == "parquet" or len(names) == 1:
        # Parquet is columnar: each column is read on its own, without building records.
        return {name: reader.column(name) for name in names}
    source = repr(str(reader.path))

    def bad(record: Any, index: int) -> InputRecordError:
        where = f"record {index} of {source}"
        if not isinstance(record, dict):
            return InputRecordError(f"{where} is not an object: {_short(record)}")
        missing = [n for n in names if n not in record]
        return InputRecordError(f"{where} has no field {missing[0]!r}: {_short(record)}")

    batches = row_batches(iter(reader), names, _READ, bad)
    stream = Lockstep(batches, names, source=source, limit=2 * batch_size + 1024)
    return {name: stream.column(name, reader.__len__) for name in names}


# --------------------------------------------------------------------------- choosing inputs
def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"bad --set {pair!r}: expected name=value, e.g. --set model='\"m\"'")
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text  # not JSON: the text itself
    return out


def choose_map_over(
    graph: Any,
    columns: list[str] | None,
    map_over: list[str] | None,
    constants: dict[str, Any],
    source: str,
) -> list[str]:
    """The fields to map over, checked against the graph's inputs and the input's columns."""
    known = set(graph.inputs) | set(graph.optional_inputs)
    unknown_sets = [n for n in constants if n not in known]
    if unknown_sets:
        raise CliError(
            f"--set names {_names(unknown_sets)} that the graph does not read; "
            f"graph inputs: {_names([*graph.inputs, *graph.optional_inputs])}"
        )
    chosen = _columns_to_map(graph, columns, map_over, constants, source)
    both = [n for n in chosen if n in constants]
    if both:
        raise CliError(
            f"{_names(both)} is both a column of {source} and set with --set; drop one "
            f"(or pick the other columns with --map-over)"
        )
    missing = [n for n in graph.inputs if n not in chosen and n not in constants]
    if missing:
        raise CliError(
            f"the graph needs inputs {_names(missing)}, which are neither columns of {source} "
            f"nor given with --set name=value"
        )
    if not chosen:
        raise CliError(f"nothing to map over: no column of {source} is a graph input")
    return chosen


def _columns_to_map(
    graph: Any,
    columns: list[str] | None,
    map_over: list[str] | None,
    constants: dict[str, Any],
    source: str,
) -> list[str]:
    """``--map-over`` and the other columns the graph reads, else the input's columns, else
    (no record to tell) the graph's inputs."""
    known = set(graph.inputs) | set(graph.optional_inputs)
    if map_over is not None:
        not_inputs = [n for n in map_over if n not in known]
        if not_inputs:
            raise CliError(
                f"--map-over names {_names(not_inputs)} that the graph does not read; "
                f"graph inputs: {_names([*graph.inputs, *graph.optional_inputs])}"
            )
        if columns is None:
            return list(map_over)
        absent = [n for n in map_over if n not in columns]
        if absent:
            raise CliError(
                f"--map-over names {_names(absent)}, not columns of {source}; "
                f"its columns: {_names(columns)}"
            )
        # The other columns the graph reads come along, zipped row by row with the named
        # ones: a column is never silently replaced by a default. ``--set`` pins one instead.
        along = [c for c in columns if c in known and c not in map_over and c not in constants]
        return [*map_over, *along]
    if columns is None:  # no record to look at: map over what the graph needs
        return [n for n in graph.inputs if n not in constants]
    # ``_index`` is the item index a StreamWriter adds to its rows (never a graph input):
    # a folder written by an earlier run reads back as input without --map-over.
    columns = [c for c in columns if c != "_index"]
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise CliError(
            f"{source} has columns the graph does not read: {_names(unknown)}; graph inputs: "
            f"{_names([*graph.inputs, *graph.optional_inputs])} (pick columns with --map-over)"
        )
    return columns


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names) or "-"
