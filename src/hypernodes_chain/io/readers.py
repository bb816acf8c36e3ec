"""Lazy readers of jsonl, parquet and csv files, or folders of shards, as ``map`` inputs.

Each reader is an iterable of dict records, read again from disk on every iteration and
never held whole in memory. ``len()`` works where the count is cheap (parquet metadata, a
writer's manifest, a line count); ``reader.column(name)`` yields one field's values, for
``map(graph, inputs={"text": read_jsonl("in.jsonl").column("text")}, map_over="text")``.

A folder is read shard by shard: the shards listed in its ``_manifest.json`` when a
``StreamWriter`` wrote it (so a file a crash left uncommitted is not read), otherwise every
file with the format's extension in natural order (``9.jsonl`` before ``10.jsonl``); hidden,
temporary and ``_``-prefixed files and folders (``_manifest.json``, ``_errors/``) are never
read.
"""

from __future__ import annotations

import csv
import json
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ._manifest import find_manifest, natural_key

__all__ = [
    "Column",
    "CsvReader",
    "JsonlReader",
    "ParquetReader",
    "read_csv",
    "read_jsonl",
    "read_parquet",
]

_UNSET: Any = object()  # restkey / restval not given: a misfit row is an error


class _Reader(Iterable[Any]):
    """A file or folder of shards, iterated lazily; subclasses read one file."""

    suffixes: tuple[str, ...] = ()

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files, self._known_len = _shard_files(self.path, self.suffixes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, files={len(self.files)})"

    def __iter__(self) -> Iterator[Any]:
        for file in self.files:
            yield from self._records(file)

    def __len__(self) -> int:
        if self._known_len is None:
            self._known_len = sum(self._count(f) for f in self.files)
        return self._known_len

    def column(self, name: str) -> Column:
        """The values of one field, record by record (a ``KeyError`` names a missing field)."""
        return Column(self, name)

    def _values(self, name: str) -> Iterator[Any]:
        for record in self:
            try:
                yield record[name]
            except KeyError:
                msg = f"field {name!r} is missing from a record of {str(self.path)!r}: {record!r}"
                raise KeyError(msg) from None

    def _records(self, file: Path) -> Iterator[Any]:
        raise NotImplementedError

    def _count(self, file: Path) -> int:
        raise NotImplementedError


class Column(Iterable[Any]):
    """One field of a reader's records, as a lazy iterable with the reader's ``len()``."""

    def __init__(self, reader: _Reader, name: str) -> None:
        self.reader, self.name = reader, name

    def __repr__(self) -> str:
        return f"{self.reader!r}.column({self.name!r})"

    def __iter__(self) -> Iterator[Any]:
        return self.reader._values(self.name)

    def __len__(self) -> int:
        return len(self.reader)


class JsonlReader(_Reader):
    """Records of JSON-lines files; blank lines are skipped. ``len()`` counts lines."""

    suffixes = (".jsonl", ".ndjson")

    def _records(self, file: Path) -> Iterator[Any]:
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    msg = f"{file}:{lineno}: not a JSON line ({exc.msg})"
                    raise ValueError(msg) from exc

    def _count(self, file: Path) -> int:
        with open(file, "rb") as f:
            return sum(1 for line in f if line.strip())


class ParquetReader(_Reader):
    """Records of parquet files, decoded ``batch_size`` rows at a time (one row group read
    at a time); ``len()`` comes from the files' metadata."""

    suffixes = (".parquet", ".pq")

    def __init__(
        self, path: str | Path, columns: Sequence[str] | None = None, batch_size: int = 16_384
    ) -> None:
        super().__init__(path)
        self.columns = None if columns is None else list(columns)
        self.batch_size = batch_size

    def _batches(self, file: Path, columns: list[str] | None) -> Iterator[Any]:
        with pq.ParquetFile(file) as pf:
            yield from pf.iter_batches(batch_size=self.batch_size, columns=columns)

    def _records(self, file: Path) -> Iterator[Any]:
        for batch in self._batches(file, self.columns):
            yield from batch.to_pylist()

    def _values(self, name: str) -> Iterator[Any]:
        for file in self.files:
            if name not in pq.read_schema(file).names:
                msg = f"field {name!r} is not a column of {str(file)!r}"
                raise KeyError(msg)
            for batch in self._batches(file, [name]):
                yield from batch.column(0).to_pylist()

    def _count(self, file: Path) -> int:
        return int(pq.read_metadata(file).num_rows)


class CsvReader(_Reader):
    """Records of csv files with a header row; values are strings unless converted.

    Empty lines are skipped. A row whose field count differs from the header's raises a
    ``ValueError`` while iterating, naming the file, the row's first line, the missing
    field names (or the extra values) and the header, e.g. ``reviews.csv line 7: 2 fields,
    the header has 3 (missing 'score'); header: id, text, score``: a ``map`` reading the
    file stops there (a writer commits what was done). Pass ``restval=`` (the value of
    missing fields) or ``restkey=`` (the key of the list of extra values) to accept such
    rows instead, as ``csv.DictReader`` does. ``fieldnames=`` names the columns of files
    without a header row. ``len()`` is a pass over the files.
    """

    suffixes = (".csv", ".tsv")

    def __init__(
        self,
        path: str | Path,
        converters: Mapping[str, Callable[[str], Any]] | None = None,
        encoding: str = "utf-8",
        **fmtparams: Any,
    ) -> None:
        super().__init__(path)
        self.converters = dict(converters or {})
        self.encoding = encoding
        self.fmtparams = fmtparams
        params = dict(fmtparams)  # csv.DictReader's own arguments; the rest go to csv.reader
        names = params.pop("fieldnames", None)
        self._fieldnames: list[str] | None = None if names is None else list(names)
        self._restkey: Any = params.pop("restkey", _UNSET)
        self._restval: Any = params.pop("restval", _UNSET)
        self._csv_params = params

    def _records(self, file: Path) -> Iterator[Any]:
        converters = self.converters
        with open(file, newline="", encoding=self.encoding) as f:
            reader = csv.reader(f, **self._csv_params)
            header = self._fieldnames
            if header is None:
                header = next((row for row in reader if row), None)
                if header is None:
                    return
            n = len(header)
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num  # a quoted field may span lines
                if len(row) == n:
                    record = dict(zip(header, row))
                elif not row:
                    continue
                else:
                    record = self._misfit(file, start, header, row)
                for name, convert in converters.items():
                    if name in record:
                        record[name] = convert(record[name])
                yield record

    def _misfit(self, file: Path, line: int, header: list[str], row: list[str]) -> dict[Any, Any]:
        """The record of a row with too few or too many fields, or the error that names it."""
        n = len(header)
        record: dict[Any, Any] = dict(zip(header, row))
        if len(row) < n:
            if self._restval is not _UNSET:
                return record | dict.fromkeys(header[len(row) :], self._restval)
            detail = "missing " + ", ".join(repr(name) for name in header[len(row) :])
        else:
            if self._restkey is not _UNSET:
                record[self._restkey] = row[n:]
                return record
            detail = "extra: " + ", ".join(reprlib.repr(value) for value in row[n:])
        msg = (
            f"{file} line {line}: {len(row)} fields, the header has {n} ({detail}); "
            f"header: {', '.join(header)}"
        )
        raise ValueError(msg)

    def _count(self, file: Path) -> int:
        with open(file, newline="", encoding=self.encoding) as f:
            rows = sum(1 for row in csv.reader(f, **self._csv_params) if row)
        return rows if self._fieldnames is not None else max(rows - 1, 0)


def read_jsonl(path: str | Path) -> JsonlReader:
    """Records (usually dicts) of a ``.jsonl`` file, or of a folder of shards, read lazily."""
    return JsonlReader(path)


def read_parquet(
    path: str | Path, columns: Sequence[str] | None = None, batch_size: int = 16_384
) -> ParquetReader:
    """Dict records of a ``.parquet`` file, or of a folder of shards, read lazily.

    Parameters
    ----------
    path
        A parquet file, or a folder of them (e.g. a ``StreamWriter`` folder).
    columns
        Read only these columns; all of them by default.
    batch_size
        Rows decoded at a time; memory is one row group plus this many records.
    """
    return ParquetReader(path, columns=columns, batch_size=batch_size)


def read_csv(
    path: str | Path,
    *,
    converters: Mapping[str, Callable[[str], Any]] | None = None,
    encoding: str = "utf-8",
    **fmtparams: Any,
) -> CsvReader:
    """Dict records of a csv file with a header row, or of a folder of them, read lazily.

    Parameters
    ----------
    path
        A csv file, or a folder of ``.csv`` files (each with its own header).
    converters
        ``{column: function}`` applied to that column's string values, e.g. ``{"n": int}``.
    encoding
        Text encoding of the files.
    **fmtparams
        ``csv.DictReader``'s options: ``fieldnames``, ``restkey``, ``restval``, and the
        format ones (``delimiter=";"``, ``quotechar``, ``dialect``, ...).

    Raises
    ------
    ValueError
        While iterating: a row has more or fewer fields than the header (and no
        ``restkey`` / ``restval`` says what to do with them). The message names the
        file, the line, the missing fields (or extra values) and the header.
    """
    return CsvReader(path, converters=converters, encoding=encoding, **fmtparams)


def _shard_files(path: Path, suffixes: tuple[str, ...]) -> tuple[list[Path], int | None]:
    """The files to read in order, and their row count when a manifest already says it."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        msg = f"no such file or folder: {str(path)!r}"
        raise FileNotFoundError(msg)
    manifest = find_manifest(path)
    if manifest is not None and f".{manifest.format}" in suffixes:
        return [path / s.file for s in manifest.shards], manifest.n_rows
    files = [
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in suffixes and not p.name.startswith((".", "_"))
    ]
    if not files:
        msg = f"folder {str(path)!r} holds no {' or '.join(suffixes)} files"
        raise FileNotFoundError(msg)
    return sorted(files, key=natural_key), None
