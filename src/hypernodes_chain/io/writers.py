"""``StreamWriter``: a map's results streamed to sharded jsonl or parquet files.

Folder layout (everything that is not data starts with ``_`` or ``.``, so pandas, pyarrow,
polars, duckdb and ``datasets`` read the folder itself as a dataset of the data rows)::

    path/
      000.parquet          rows of the first shard (or .jsonl)
      001.parquet          ...
      _manifest.json       format, graph, node fingerprints, schema, shards (rows, index
                           ranges, size, blake2b), finished flag
      _errors/000.jsonl    failures (on_error="collect"): one JSON object each, with inputs
      _writer.lock         held while a writer is open; names its holder

The runner drives it: ``open`` once (it returns the indices to skip), ``write_columns`` per
batch, ``close`` at the end, also when the map raised. Every file is written whole and
renamed into place, then committed by the manifest (see ``_manifest``); each commit and each
buffer update is all-or-nothing, also against Ctrl-C (see ``_signals``). So a process killed
or interrupted at any moment leaves a folder that ``resume=True`` completes with every item
exactly once.
"""

from __future__ import annotations

import warnings
from collections.abc import Container, Iterable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from ..exceptions import ResumeError, ResumeWarning
from ..results import ItemFailure, MapResult
from ._buffers import JsonlBuffer, ParquetBuffer, Rejected, dumps_lenient
from ._errors import FailureLog
from ._flatten import flatten_columns, flatten_into
from ._intervals import IndexSet
from ._lock import FolderLock
from ._manifest import (
    ERRORS_DIR,
    MANIFEST,
    OLD_MANIFEST,
    Manifest,
    ShardEntry,
    atomic_write,
    committed_files,
    migrate_old_layout,
    remove_stale_files,
)
from ._signals import deferred_interrupts

__all__ = ["StreamWriter"]

_PLAIN = frozenset({int, float, str, bool, type(None), bytes})
Item = tuple[int, Mapping[str, object], Mapping[str, object]]
WRITER_NODE = "StreamWriter"  # the ``node`` of a failure the writer records itself


class StreamWriter:
    """Stream the results of ``map`` into shards of at most ``max_lines_per_file`` rows.

    A row holds ``_index`` (the 0-based item index), then the item's mapped inputs, then its
    outputs. Memory stays at one shard's worth of rows whatever the number of items. Failures
    are encoded as they come and committed with the next data shard (or on their own once
    ``max_lines_per_file`` of them wait); the writer keeps their count and the first
    `KEPT_FAILURES` records, and its result reads the others back from ``_errors/``. One
    writer serves one map, called from one thread; while it is open it holds an exclusive
    lock on the folder, so a second writer (of any process) fails at once.

    Parameters
    ----------
    path
        Folder of the shards; created if missing.
    format
        ``"jsonl"`` or ``"parquet"``. Values are stored as they are or not at all: in jsonl,
        dataclass and pydantic values become objects, numpy values ``tolist()``, dates ISO
        strings, while NaN, infinities and objects JSON cannot hold make their item fail
        (naming the column); in parquet a value that does not fit its column's type (see
        ``ParquetBuffer``) makes its item fail. Such failures are recorded like a node's.
    max_lines_per_file
        Rows per shard; the last shard of a run may be shorter.
    flatten
        Spread dict, dataclass and pydantic values into dotted columns: ``summary.title``,
        ``summary.meta.source``. Two values that flatten to one name fail their item. Off:
        such a value is one column (an object, or a struct).
    include_inputs
        Write the item's mapped inputs beside its outputs.
    resume
        Continue the folder of an earlier run (finished, failed or killed): the items
        already stored are skipped and nothing is written twice; items recorded as failed
        are computed again (their new outcome replaces the old record); shards that do not
        match the manifest (damaged, truncated, gone) are removed, with a `ResumeWarning`,
        and their items computed again. Resuming with changed node code is a `ResumeError`
        naming the nodes, unless ``resume="force"``, which mixes the versions knowingly.
        Off, a folder that already holds shards is an error rather than silently mixed.
    schema
        A ``pyarrow.Schema`` for parquet: every column gets its declared type (instead of
        the type of its first values), a value that does not fit fails its item, and a
        column the schema does not declare is an error.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: Literal["jsonl", "parquet"] = "jsonl",
        max_lines_per_file: int = 100_000,
        flatten: bool = True,
        include_inputs: bool = True,
        resume: bool | Literal["force"] = False,
        schema: Any = None,
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
        if resume not in (True, False, "force"):
            msg = f"resume must be True, False or 'force', got {resume!r}"
            raise ValueError(msg)
        if schema is not None and format != "parquet":
            msg = "schema= applies to format='parquet' only"
            raise ValueError(msg)
        self.path = Path(path)
        self.format = format
        self.max_lines_per_file = max_lines_per_file
        self.flatten = flatten
        self.include_inputs = include_inputs
        self.resume = resume
        self.schema = schema
        self._buffer: JsonlBuffer | ParquetBuffer = (
            ParquetBuffer(schema) if format == "parquet" else JsonlBuffer()
        )
        self._manifest: Manifest | None = None
        self._lock: FolderLock | None = None
        self._done = IndexSet()
        self._pending_errors: list[bytes] = []  # encoded records waiting for the next commit
        self._pending_indices: list[int] = []
        self._failures = FailureLog()
        self._n_rows = 0  # rows this run
        self._result: MapResult | None = None

    def __repr__(self) -> str:
        return (
            f"StreamWriter({str(self.path)!r}, format={self.format!r}, "
            f"max_lines_per_file={self.max_lines_per_file}, resume={self.resume})"
        )

    # -- the protocol the runners call ------------------------------------------------

    def open(
        self,
        *,
        graph_name: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        fingerprints: Mapping[str, str | None] | None = None,
    ) -> Container[int]:
        """Lock and prepare the folder; return the item indices to skip (on resume).

        Raises
        ------
        FileExistsError
            The folder already holds shards and ``resume`` is off, or ``path`` is a file.
        WriterLockedError
            Another writer has the folder open (its pid and command are named).
        ResumeError
            On resume, the folder was written by a different map (format, names, settings)
            or, unless ``resume="force"``, by other code (the changed nodes are named).
        ValueError
            ``_index`` is an input or output name.
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
            fingerprints=dict(fingerprints or {}),
        )
        lock = FolderLock(folder)
        lock.acquire()
        try:
            with deferred_interrupts():
                manifest = self._prepare(folder, fresh)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._buffer.restore(manifest.schema)
        self._manifest = manifest
        self._done = manifest.done()
        return self._done

    def write_batch(
        self, items: Sequence[Item], failures: Sequence[ItemFailure]
    ) -> list[ItemFailure]:
        """Buffer one batch of results (in index order) and its failures; commit full shards.

        Returns the items that could not be stored (recorded as failures of their own)."""
        with deferred_interrupts():
            self._check_open(index for index, _, _ in items)
            self._queue_failures(failures)
            self._queue_failures(refused := self._add_items(items))
        return refused

    def write_columns(
        self,
        indices: Sequence[int],
        inputs: Mapping[str, Sequence[Any]],
        outputs: Mapping[str, Sequence[Any]],
        failures: Sequence[ItemFailure],
    ) -> list[ItemFailure]:
        """The columnar twin of `write_batch`: one list per mapped input and per output.

        Parquet batches of plain values go into the buffer as they are, with no row built
        per item; anything else (jsonl, values to flatten) takes the row path.
        """
        with deferred_interrupts():
            self._check_open(indices)
            self._queue_failures(failures)
            self._queue_failures(refused := self._add_columns(indices, inputs, outputs))
        return refused

    def close(self, *, finished: bool = True) -> MapResult:
        """Commit what is buffered (a short last shard), mark the manifest, unlock, summarise.

        With ``finished=False`` (the map raised) the buffered rows are still committed, so
        a resumed run does not compute them again. Closing twice returns the first result;
        closing a writer never opened touches nothing.

        Returns
        -------
        MapResult
            This run's counts and failures (a `Failures`: the first ones in memory, the
            rest read from ``_errors/``), the items skipped, and the folder's totals and
            data shards. ``duration_s`` is left to the runner.
        """
        if self._result is not None:
            return self._result
        if self._manifest is None:
            return MapResult(path=self.path)
        try:
            self._commit(finished=finished)
        finally:
            if self._lock is not None:
                self._lock.release()
        manifest = self._manifest
        n_failed = self._failures.n
        self._result = MapResult(
            n_items=self._n_rows + n_failed,
            n_ok=self._n_rows,
            n_failed=n_failed,
            files=[self.path / s.file for s in manifest.shards],
            failures=self._failures.failures(self.path),
            path=self.path,
            n_skipped=len(self._done),
            total_ok=manifest.n_rows,
            total_failed=manifest.n_failed,
        )
        return self._result

    # -- opening ----------------------------------------------------------------------

    def _prepare(self, folder: Path, fresh: Manifest) -> Manifest:
        """The manifest this run continues: a fresh one, or the checked earlier one."""
        if not self.resume:
            self._refuse_old(folder)
            manifest = fresh
        else:
            migrate_old_layout(folder)
            manifest = self._previous(folder, fresh) or fresh
        remove_stale_files(folder, manifest)
        manifest.finished = False
        manifest.save(folder)
        return manifest

    def _refuse_old(self, folder: Path) -> None:
        names = [n for n in (MANIFEST, OLD_MANIFEST) if (folder / n).exists()]
        old = Manifest.load(folder, names[0]) if names else None
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
        for attr in ("format", "inputs", "outputs", "include_inputs", "flatten"):
            was, now = getattr(old, attr), getattr(fresh, attr)
            if was != now and (attr != "inputs" or self.include_inputs):
                msg = (
                    f"cannot resume {str(folder)!r}: it was written with {attr}={was!r}, this "
                    f"map has {attr}={now!r}; use the same settings or a new path"
                )
                raise ResumeError(msg)
        self._check_code(folder, old, fresh)
        self._check_schema(folder, old)
        self._drop_damaged(folder, old)
        # failed items are computed again: their records go, the new outcome replaces them
        old.errors = []
        return old

    def _check_code(self, folder: Path, old: Manifest, fresh: Manifest) -> None:
        was, now = old.fingerprints, fresh.fingerprints
        if was and now and was != now:
            changed = sorted(n for n in was.keys() & now.keys() if was[n] != now[n])
            added, gone = sorted(now.keys() - was.keys()), sorted(was.keys() - now.keys())
            if self.resume != "force" and (old.shards or old.errors):
                parts = [f"the code of {_names(changed)} changed"] if changed else []
                parts += [f"{_names(added)} {'is' if len(added) == 1 else 'are'} new"] * bool(added)
                parts += [f"{_names(gone)} {'is' if len(gone) == 1 else 'are'} gone"] * bool(gone)
                msg = (
                    f"cannot resume {str(folder)!r}: {'; '.join(parts)} since its rows were "
                    f"written, so the folder would mix results of two versions of the code. "
                    f"Write to a new path, or pass resume='force' (CLI: --resume force) to mix "
                    f"them knowingly"
                )
                raise ResumeError(msg)
        if now:
            old.fingerprints = now

    def _check_schema(self, folder: Path, old: Manifest) -> None:
        if self.schema is None or not old.shards or "arrow" not in old.schema:
            return
        kept = ParquetBuffer()
        kept.restore(old.schema)
        declared = ParquetBuffer(self.schema)
        if kept.schema_json()["columns"] != declared.schema_json()["columns"]:
            msg = (
                f"cannot resume {str(folder)!r}: its shards have the schema "
                f"{kept.schema_json()['columns']}, not the declared one; use a new path"
            )
            raise ResumeError(msg)

    def _drop_damaged(self, folder: Path, manifest: Manifest) -> None:
        """Forget the shards whose file does not match the manifest: their items are redone."""
        kept = []
        for entry in manifest.shards:
            why = entry.damage(folder)
            if why is None:
                kept.append(entry)
                continue
            (folder / entry.file).unlink(missing_ok=True)
            warnings.warn(
                f"{str(folder / entry.file)!r} does not match {MANIFEST}: {why}. It is removed "
                f"and its {entry.rows:,} items (indices {entry.first_index}..{entry.last_index})"
                f" are computed again.",
                ResumeWarning,
                stacklevel=6,
            )
        manifest.shards = kept

    # -- writing ----------------------------------------------------------------------

    def _check_open(self, indices: Iterable[int]) -> None:
        if self._manifest is None or self._result is not None:
            msg = f"{self!r} is not open: the runner calls open() before writing"
            raise RuntimeError(msg)
        if self._done:
            done = self._done
            for index in indices:
                if index in done:
                    msg = (
                        f"item {index} is already stored in {str(self.path)!r}: a resumed map "
                        f"must skip the indices that StreamWriter.open() returned"
                    )
                    raise ValueError(msg)

    def _queue_failures(self, failures: Sequence[ItemFailure]) -> None:
        if failures:
            # encoded now, so that neither the records nor their errors wait for the commit
            lines = [(dumps_lenient(f.to_record()) + "\n").encode() for f in failures]
            self._pending_errors.extend(lines)
            self._pending_indices.extend(f.index for f in failures)
            self._failures.add(failures)
        if len(self._pending_errors) >= self.max_lines_per_file:
            self._commit()

    def _add_columns(
        self,
        indices: Sequence[int],
        inputs: Mapping[str, Sequence[Any]],
        outputs: Mapping[str, Sequence[Any]],
    ) -> list[ItemFailure]:
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
            outs = zip(*outputs.values()) if outputs else ((),) * len(indices)
            items = [
                (index, dict(zip(inputs, ins)), dict(zip(outputs, out)))
                for index, ins, out in zip(indices, rows, outs)
            ]
            return self._add_items(items)
        full = {k: v if isinstance(v, list) else list(v) for k, v in columns.items()}
        buffer = self._buffer
        assert isinstance(buffer, ParquetBuffer)

        def add(start: int, stop: int) -> Rejected:
            whole = start == 0 and stop == len(indices)
            part = full if whole else {k: v[start:stop] for k, v in full.items()}
            return buffer.extend(part, stop - start)

        return self._refused(self._fill(len(indices), add), inputs, indices)

    def _add_items(self, items: Sequence[Item]) -> list[ItemFailure]:
        rows: list[dict[str, Any]] = []
        rejected: Rejected = []
        for index, inputs, outputs in items:
            try:
                rows.append(self._row(index, inputs, outputs))
            except ValueError as exc:  # two values flatten to one column
                rejected.append((index, exc))
        add = lambda start, stop: self._buffer.add_rows(rows[start:stop])  # noqa: E731
        rejected += self._fill(len(rows), add)
        if not rejected:
            return []
        by_index = {index: inputs for index, inputs, _ in items}
        return [
            ItemFailure.from_exception(i, WRITER_NODE, exc).with_inputs(by_index[i])
            for i, exc in sorted(rejected, key=itemgetter(0))
        ]

    def _refused(
        self, rejected: Rejected, inputs: Mapping[str, Sequence[Any]], indices: Sequence[int]
    ) -> list[ItemFailure]:
        if not rejected:
            return []
        pos = {index: p for p, index in enumerate(indices)}
        return [
            ItemFailure.from_exception(i, WRITER_NODE, exc).with_inputs(
                {k: v[pos[i]] for k, v in inputs.items()}
            )
            for i, exc in rejected
        ]

    def _fill(self, n: int, add: Any) -> Rejected:
        """Add ``n`` rows through ``add(start, stop)``, committing each shard when full."""
        limit, start = self.max_lines_per_file, 0
        rejected: Rejected = []
        while start < n:
            stop = min(n, start + limit - len(self._buffer))
            rejected += add(start, stop)
            if len(self._buffer) >= limit:
                self._commit()
            start = stop
        return rejected

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
                if type(value) in _PLAIN and key not in row:
                    row[key] = value
                else:
                    flatten_into(row, key, value)
        return row

    def _commit(self, finished: bool = False) -> None:
        """Write the pending error shard and data shard, then the manifest that lists them.

        All or nothing: if anything raises (or Ctrl-C arrives) before the new manifest is
        in place, the files of this commit are removed and the writer is as it was.
        """
        with deferred_interrupts():
            folder, buffer = self.path, self._buffer
            assert self._manifest is not None
            new = self._manifest.copy()
            new.finished = finished
            data = buffer.freeze() if len(buffer) else None  # may raise: nothing written yet
            written: list[Path] = []
            errors = None
            try:
                if self._pending_errors:
                    name = new.next_name(errors=True, suffix="jsonl")
                    lines = self._pending_errors  # written line by line: no joined copy
                    (folder / ERRORS_DIR).mkdir(exist_ok=True)
                    atomic_write(folder / name, lambda f: f.writelines(lines))
                    written.append(folder / name)
                    errors = ShardEntry.of(name, self._pending_indices, lines)
                    new.errors.append(errors)
                if data is not None:
                    name = new.next_name(errors=False, suffix=buffer.suffix)
                    atomic_write(folder / name, data)
                    written.append(folder / name)
                    new.shards.append(ShardEntry.of(name, list(buffer.indices), data))
                    new.schema = buffer.schema_json()
                new.save(folder)
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            self._manifest = new
            self._n_rows += len(buffer)
            buffer.clear()
            if errors is not None:
                self._failures.shards.append(errors)
            self._pending_errors, self._pending_indices = [], []


def _names(nodes: Sequence[str]) -> str:
    quoted = ", ".join(repr(n) for n in nodes)
    return f"node {quoted}" if len(nodes) == 1 else f"nodes {quoted}"
