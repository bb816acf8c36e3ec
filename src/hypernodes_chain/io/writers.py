"""``StreamWriter``: a map's results streamed to sharded jsonl or parquet files.

Folder layout::

    path/
      manifest.json        format, graph, inputs/outputs, schema, shards, finished flag
      000.parquet          rows 0 .. max_lines_per_file-1 (or .jsonl)
      001.parquet          ...
      errors/000.jsonl     failures (on_error="collect"), one JSON object each

The runner drives it: ``open`` once (it returns the indices to skip), ``write_batch`` per
batch, ``close`` at the end, also when the map raised. Every file is written whole and
renamed into place, then committed by the manifest (see ``_manifest``), so a process killed
at any moment leaves a folder that ``resume=True`` completes with every item exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from ..results import ItemFailure, MapResult
from ._buffers import JsonlBuffer, ParquetBuffer, dumps
from ._flatten import flatten_columns, flatten_into
from ._intervals import IndexSet
from ._manifest import (
    ERRORS_DIR,
    MANIFEST,
    Manifest,
    ShardEntry,
    atomic_write,
    committed_files,
    remove_stale_files,
)

__all__ = ["StreamWriter"]

_PLAIN = frozenset({int, float, str, bool, type(None), bytes})
Item = tuple[int, Mapping[str, object], Mapping[str, object]]


class StreamWriter:
    """Stream the results of ``map`` into shards of at most ``max_lines_per_file`` rows.

    A row holds ``_index`` (the 0-based item index), then the item's mapped inputs, then its
    outputs. Memory stays at one shard's worth of rows whatever the number of items. Failures
    are committed with the next data shard (or on their own once ``max_lines_per_file`` of
    them wait). One writer serves one map, called from one thread.

    Parameters
    ----------
    path
        Folder of the shards; created if missing.
    format
        ``"jsonl"`` (values JSON cannot encode are written through ``json_default``: dataclass
        and pydantic values as objects, numpy values via ``tolist()``, dates as ISO strings,
        anything else as ``str(value)``) or ``"parquet"`` (one schema for every shard, inferred
        from the first non-null values; see ``ParquetBuffer``).
    max_lines_per_file
        Rows per shard; the last shard of a run may be shorter.
    flatten
        Spread dict, dataclass and pydantic values into dotted columns: ``summary.title``,
        ``summary.meta.source``. Off: such a value is one column (an object, or a struct).
    include_inputs
        Write the item's mapped inputs beside its outputs.
    resume
        Continue the folder of an earlier run (finished, failed or killed): the items already
        stored, written or failed, are skipped and nothing is written twice. Off, a folder
        that already holds shards is an error rather than silently mixed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: Literal["jsonl", "parquet"] = "jsonl",
        max_lines_per_file: int = 100_000,
        flatten: bool = True,
        include_inputs: bool = True,
        resume: bool = False,
    ) -> None:
        if format not in ("jsonl", "parquet"):
            msg = f"format must be 'jsonl' or 'parquet', got {format!r}"
            raise ValueError(msg)
        if isinstance(max_lines_per_file, bool) or not isinstance(max_lines_per_file, int):
            msg = f"max_lines_per_file must be an int, got {max_lines_per_file!r}"
            raise TypeError(msg)
        if max_lines_per_file < 1:
            msg = f"max_lines_per_file must be at least 1, got {max_lines_per_file}"
            raise ValueError(msg)
        self.path = Path(path)
        self.format = format
        self.max_lines_per_file = max_lines_per_file
        self.flatten = flatten
        self.include_inputs = include_inputs
        self.resume = resume
        self._buffer: JsonlBuffer | ParquetBuffer = (
            ParquetBuffer() if format == "parquet" else JsonlBuffer()
        )
        self._manifest: Manifest | None = None
        self._done = IndexSet()
        self._pending_failures: list[ItemFailure] = []
        self._failures: list[ItemFailure] = []
        self._result: MapResult | None = None

    def __repr__(self) -> str:
        return (
            f"StreamWriter({str(self.path)!r}, format={self.format!r}, "
            f"max_lines_per_file={self.max_lines_per_file}, resume={self.resume})"
        )

    # -- the protocol the runners call ------------------------------------------------

    def open(
        self, *, graph_name: str, input_names: Sequence[str], output_names: Sequence[str]
    ) -> Container[int]:
        """Prepare the folder; return the item indices to skip (non-empty only on resume).

        Raises
        ------
        FileExistsError
            The folder already holds shards and ``resume`` is off, or ``path`` is a file.
        FileNotFoundError
            On resume, a shard the manifest lists is gone.
        ValueError
            ``_index`` is an input or output name; or, on resume, the folder was written by a
            different map (format, names or settings differ).
        RuntimeError
            The writer was already opened.
        """
        if self._manifest is not None or self._result is not None:
            msg = f"{self!r} was already opened; use a new StreamWriter for each map"
            raise RuntimeError(msg)
        named = [*input_names, *output_names] if self.include_inputs else list(output_names)
        if "_index" in named:
            msg = "'_index' is reserved for the item index column; rename that input or output"
            raise ValueError(msg)
        folder = self.path
        if folder.exists() and not folder.is_dir():
            msg = f"writer path {str(folder)!r} is a file, not a folder"
            raise FileExistsError(msg)
        folder.mkdir(parents=True, exist_ok=True)
        fresh = Manifest(
            format=self.format,
            graph=graph_name,
            inputs=list(input_names),
            outputs=list(output_names),
            include_inputs=self.include_inputs,
            flatten=self.flatten,
        )
        if self.resume:
            manifest = self._previous(folder, fresh) or fresh
        else:
            self._refuse_old(folder)
            manifest = fresh
        remove_stale_files(folder, manifest)
        manifest.finished = False
        manifest.save(folder)
        self._buffer.restore(manifest.schema)
        self._manifest = manifest
        self._done = manifest.done()
        return self._done

    def write_batch(self, items: Sequence[Item], failures: Sequence[ItemFailure]) -> None:
        """Buffer one batch of results (in index order) and its failures; commit full shards."""
        self._accept((index for index, _, _ in items), failures)
        columns = self._plain_columns(items) if isinstance(self._buffer, ParquetBuffer) else None
        if columns is None:
            rows = [self._row(index, inputs, outputs) for index, inputs, outputs in items]
            self._fill(len(rows), lambda start, stop: self._buffer.add_rows(rows[start:stop]))
        else:
            self._fill(len(items), lambda start, stop: self._add_slice(columns, start, stop))
        if len(self._pending_failures) >= self.max_lines_per_file:
            self._commit()

    def write_columns(
        self,
        indices: Sequence[int],
        inputs: Mapping[str, Sequence[Any]],
        outputs: Mapping[str, Sequence[Any]],
        failures: Sequence[ItemFailure],
    ) -> None:
        """The columnar twin of `write_batch`: one list per mapped input and per output.

        Parquet batches of plain values go into the buffer as they are, with no row built
        per item; anything else (jsonl, values to flatten) takes the row path.
        """
        given: dict[str, Sequence[Any]] = {"_index": indices}
        for part in (inputs, outputs) if self.include_inputs else (outputs,):
            given.update(part)
        columns = flatten_columns(given) if self.flatten and indices else given
        plain = (
            columns is not None
            and isinstance(self._buffer, ParquetBuffer)
            and all(set(map(type, values)) <= _PLAIN for values in columns.values())
        )
        if not plain or columns is None:
            rows = zip(*inputs.values()) if inputs else ((),) * len(indices)
            outs = list(zip(*outputs.values()))
            items = [
                (index, dict(zip(inputs, ins)), dict(zip(outputs, out)))
                for index, ins, out in zip(indices, rows, outs)
            ]
            self.write_batch(items, failures)
            return
        self._accept(indices, failures)
        full = {k: list(v) for k, v in columns.items()}
        self._fill(len(indices), lambda start, stop: self._add_slice(full, start, stop))
        if len(self._pending_failures) >= self.max_lines_per_file:
            self._commit()

    def _accept(self, indices: Iterable[int], failures: Sequence[ItemFailure]) -> None:
        if self._manifest is None or self._result is not None:
            msg = f"{self!r} is not open: the runner calls open() before writing"
            raise RuntimeError(msg)
        if self._done:
            self._refuse_done(indices)
        self._failures.extend(failures)
        self._pending_failures.extend(failures)  # committed with the next shard

    def close(self, *, finished: bool = True) -> MapResult:
        """Commit what is buffered (a short last shard), mark the manifest, summarise.

        With ``finished=False`` (the map raised) the buffered rows are still committed, so
        a resumed run does not compute them again. Closing twice returns the first result;
        closing a writer never opened touches nothing.

        Returns
        -------
        MapResult
            Counts and ``files`` describe the whole folder, earlier runs included when
            resuming (``n_items == n_ok + n_failed``; ``n_skipped`` of them were there before
            this run); ``failures`` holds this run's records only, earlier ones are in
            ``errors/``. ``duration_s`` is left to the runner.
        """
        if self._result is not None:
            return self._result
        manifest = self._manifest
        if manifest is None:
            return MapResult(path=self.path)
        manifest.finished = finished
        try:
            self._commit()
        except TypeError:
            if finished:
                raise
            # The buffered rows cannot be stored (a value misfits the parquet schema): they
            # stay uncommitted, and a resumed run computes them again.
            self._buffer.clear()
            self._commit()
        folder = self.path
        self._result = MapResult(
            n_items=manifest.n_rows + manifest.n_failed,
            n_ok=manifest.n_rows,
            n_failed=manifest.n_failed,
            files=[folder / s.file for s in manifest.shards],
            failures=list(self._failures),
            path=folder,
            n_skipped=len(self._done),
        )
        return self._result

    # -- helpers ----------------------------------------------------------------------

    def _refuse_done(self, indices: Iterable[int]) -> None:
        done = self._done
        for index in indices:
            if index in done:
                msg = (
                    f"item {index} is already stored in {str(self.path)!r}: a resumed map "
                    f"must skip the indices that StreamWriter.open() returned"
                )
                raise ValueError(msg)

    def _plain_columns(self, items: Sequence[Item]) -> dict[str, list[Any]] | None:
        """The batch as columns when every item has the same keys and only plain values.

        The fast path of the parquet writer (no per-row dict); None sends the batch through
        the row path, which flattens.
        """
        if not items:
            return None
        columns: dict[str, list[Any]] = {"_index": list(map(itemgetter(0), items))}
        for pos in (1, 2) if self.include_inputs else (2,):
            parts = list(map(itemgetter(pos), items))
            keys = list(parts[0])
            if set(map(len, parts)) != {len(keys)}:
                return None
            for key in keys:
                try:
                    values = list(map(itemgetter(key), parts))
                except KeyError:
                    return None
                if not set(map(type, values)) <= _PLAIN:
                    return None
                columns[key] = values
        return columns

    def _fill(self, n: int, add: Callable[[int, int], None]) -> None:
        """Add ``n`` rows through ``add(start, stop)``, committing each shard when full."""
        limit, start = self.max_lines_per_file, 0
        while start < n:
            stop = min(n, start + limit - len(self._buffer))
            add(start, stop)
            if len(self._buffer) >= limit:
                self._commit()
            start = stop

    def _add_slice(self, columns: dict[str, list[Any]], start: int, stop: int) -> None:
        assert isinstance(self._buffer, ParquetBuffer)
        whole = start == 0 and stop == len(columns["_index"])
        part = columns if whole else {k: v[start:stop] for k, v in columns.items()}
        self._buffer.extend(part, stop - start)

    def _row(
        self, index: int, inputs: Mapping[str, object], outputs: Mapping[str, object]
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"_index": index}
        parts = (inputs, outputs) if self.include_inputs else (outputs,)
        if not self.flatten:
            for part in parts:
                row.update(part)
            return row
        for part in parts:
            for key, value in part.items():
                if type(value) in _PLAIN:
                    row[key] = value
                else:
                    flatten_into(row, key, value)
        return row

    def _commit(self) -> None:
        """Write the pending error shard and data shard, then the manifest that lists them."""
        manifest, folder = self._manifest, self.path
        assert manifest is not None
        data = self._buffer.freeze() if len(self._buffer) else None  # may raise: write nothing
        if self._pending_failures:
            name = f"{ERRORS_DIR}/{len(manifest.errors):03d}.jsonl"
            text = "".join(dumps(f.to_record()) + "\n" for f in self._pending_failures).encode()
            (folder / ERRORS_DIR).mkdir(exist_ok=True)
            atomic_write(folder / name, lambda f: f.write(text))
            manifest.errors.append(ShardEntry.of(name, [f.index for f in self._pending_failures]))
            self._pending_failures = []
        if data is not None:
            name = f"{len(manifest.shards):03d}.{self._buffer.suffix}"
            atomic_write(folder / name, data)
            manifest.shards.append(ShardEntry.of(name, list(self._buffer.indices)))
            manifest.schema = self._buffer.schema_json()
            self._buffer.clear()
        manifest.save(folder)

    def _refuse_old(self, folder: Path) -> None:
        old = Manifest.load(folder) if (folder / MANIFEST).exists() else None
        if committed_files(folder) or (old is not None and (old.shards or old.errors)):
            msg = (
                f"writer path {str(folder)!r} already holds shards from an earlier run; pass "
                f"resume=True to continue it, or choose a new path"
            )
            raise FileExistsError(msg)

    def _previous(self, folder: Path, fresh: Manifest) -> Manifest | None:
        if not (folder / MANIFEST).exists():
            if committed_files(folder):
                msg = (
                    f"cannot resume {str(folder)!r}: it holds shard files but no {MANIFEST}, "
                    f"so it was not written by StreamWriter; choose a new path"
                )
                raise FileExistsError(msg)
            return None
        old = Manifest.load(folder)
        missing = [s.file for s in [*old.shards, *old.errors] if not (folder / s.file).is_file()]
        if missing:
            msg = (
                f"cannot resume {str(folder)!r}: its {MANIFEST} lists {missing[0]!r}, which is "
                f"gone, so those items would be skipped but not stored; choose a new path"
            )
            raise FileNotFoundError(msg)
        for attr in ("format", "inputs", "outputs", "include_inputs", "flatten"):
            was, now = getattr(old, attr), getattr(fresh, attr)
            if was != now and (attr != "inputs" or self.include_inputs):
                msg = (
                    f"cannot resume {str(folder)!r}: it was written with {attr}={was!r}, this "
                    f"map has {attr}={now!r}; use the same settings or a new path"
                )
                raise ValueError(msg)
        return old
