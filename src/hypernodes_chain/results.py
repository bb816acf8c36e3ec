"""Plain records that runners hand back: a failed item, the failures of a streamed map
(the first few in memory, the rest where the writer stored them), and the map's summary."""

from __future__ import annotations

import json
import operator
import traceback as _tb
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, overload

from .exceptions import RecordedError

__all__ = ["KEPT_FAILURES", "Failures", "ItemFailure", "MapResult", "Writer"]


@dataclass(frozen=True)
class ItemFailure:
    """One item of a ``map`` that failed under ``on_error="collect"``.

    It stands in the item's place in the returned list (and goes to the errors shard
    of a writer), so nothing is dropped silently.
    """

    index: int
    node: str
    error: BaseException
    traceback: str = field(default="", repr=False)  # in `to_record` and `_errors/`
    path: tuple[str, ...] = ()
    inputs: Mapping[str, Any] | None = field(default=None, compare=False)
    """The item's mapped inputs, so that the failure can be reproduced."""

    @classmethod
    def from_exception(
        cls, index: int, node: str, error: BaseException, path: tuple[str, ...] = ()
    ) -> ItemFailure:
        text = "".join(_tb.format_exception(type(error), error, error.__traceback__))
        # keep the text, drop the frames: they pin every local of the failed call (whole
        # batch columns) in memory for as long as the record lives
        error.__traceback__ = None
        return cls(index=index, node=node, error=error, traceback=text, path=path)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ItemFailure:
        """The failure that `to_record` wrote, read back; its ``error`` is a `RecordedError`
        with the original's type name and message."""
        message, error_type = str(record["message"]), str(record["error_type"])
        error = RecordedError(message, error_type, record.get("raw_reply"))
        return cls(
            index=record["_index"],
            node=record["node"],
            error=error,
            traceback=record.get("traceback", ""),
            path=tuple(record.get("path", ())),
            inputs=record.get("inputs"),
        )

    @property
    def error_type(self) -> str:
        if isinstance(self.error, RecordedError):
            return self.error.error_type
        return type(self.error).__name__

    @property
    def message(self) -> str:
        return str(self.error)

    def with_inputs(self, inputs: Mapping[str, Any]) -> ItemFailure:
        """This record with the item's mapped inputs attached."""
        return replace(self, inputs=inputs)

    def to_record(self) -> dict[str, object]:
        """A JSON-ready dict: ``_index``, node, error type, message, traceback, and the
        item's inputs (each cut to `INPUT_LIMIT` characters of JSON when longer)."""
        record: dict[str, object] = {
            "_index": self.index,
            "node": self.node,
            "path": list(self.path),
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
        }
        if self.inputs is not None:
            record["inputs"] = {k: _clip(v) for k, v in self.inputs.items()}
        raw = getattr(self.error, "raw", None)  # an LLM reply that did not validate
        if isinstance(raw, str):
            record["raw_reply"] = raw
        return record


INPUT_LIMIT = 2_000
"""Characters of JSON an error record keeps of each input value."""


def _clip(value: object) -> object:
    """``value`` when it is small plain JSON; else its JSON (or repr) cut to the limit."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
        plain = False
    else:
        plain = True
    if len(text) <= INPUT_LIMIT:
        return value if plain else text
    return f"{text[:INPUT_LIMIT]}... [truncated: {len(text):,} characters]"


KEPT_FAILURES = 100
"""How many failure records a map that streams to a writer keeps in memory: the first ones."""


class Failures(Sequence[ItemFailure]):
    """The failures of a map, in the order they were recorded: a read-only sequence.

    The first ones (`kept`) are held in memory; the others are read when asked for through
    ``read(start)``, which yields the records from position ``start`` on (a `StreamWriter`
    reads them from its ``_errors/`` shards). Iterate rather than index past `kept`: each
    such index reads from the start of a shard.
    """

    __slots__ = ("_kept", "_n", "_read", "where")

    def __init__(
        self,
        kept: Sequence[ItemFailure] = (),
        n: int | None = None,
        read: Callable[[int], Iterator[ItemFailure]] | None = None,
        where: str | None = None,
    ) -> None:
        self._kept = list(kept)
        self._n = len(self._kept) if n is None else n
        if self._n > len(self._kept) and read is None:
            msg = f"{self._n:,} failures with {len(self._kept):,} in memory need read= for the rest"
            raise ValueError(msg)
        self._read = read
        self.where = where
        """Where the records that are not in memory are, for display."""

    @property
    def kept(self) -> list[ItemFailure]:
        """The records held in memory: the first ones."""
        return list(self._kept)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> ItemFailure: ...

    @overload
    def __getitem__(self, i: slice) -> list[ItemFailure]: ...

    def __getitem__(self, i: int | slice) -> ItemFailure | list[ItemFailure]:
        if isinstance(i, slice):
            wanted = range(*i.indices(self._n))
            if not wanted:
                return []
            low = min(wanted)
            span = list(self._between(low, max(wanted) + 1))
            return [span[k - low] for k in wanted]
        k = operator.index(i)
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            msg = f"failure {i} is out of range: the map recorded {self._n:,}"
            raise IndexError(msg)
        if k < len(self._kept):
            return self._kept[k]
        return next(self._between(k, k + 1))

    def __iter__(self) -> Iterator[ItemFailure]:
        return self._between(0, self._n)

    def __reversed__(self) -> Iterator[ItemFailure]:
        return reversed(list(self))  # one pass over the shards, not one read per record

    def _between(self, start: int, stop: int) -> Iterator[ItemFailure]:
        """The records from position ``start`` to ``stop`` (excluded)."""
        kept = self._kept
        yield from kept[start:stop]
        if stop > len(kept):
            assert self._read is not None
            first = max(start, len(kept))
            yield from islice(self._read(first), stop - first)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        rest = f", the rest in {self.where!r}" if self.where and self._n > len(self._kept) else ""
        return f"Failures({self._n:,} records, {len(self._kept):,} in memory{rest})"


@dataclass(repr=False)
class MapResult:
    """What ``map(..., writer=...)`` returns instead of a list.

    ``n_items``, ``n_ok``, ``n_failed`` and ``failures`` count the items this run computed
    (``n_items == n_ok + n_failed``); ``n_skipped`` the items a resumed run found already
    stored and skipped. ``total_ok`` and ``total_failed`` describe the whole folder after
    the run, earlier runs included (`total_items` is their sum); ``files`` are all its data
    shards. ``failures`` is a `Failures` sequence: its first `KEPT_FAILURES` records are in
    memory, the others are read from the ``_errors/`` shards when asked for.
    """

    n_items: int = 0
    n_ok: int = 0
    n_failed: int = 0
    files: list[Path] = field(default_factory=list)
    failures: Sequence[ItemFailure] = field(default_factory=Failures)
    duration_s: float = 0.0
    path: Path | None = None
    n_skipped: int = 0
    total_ok: int = 0
    total_failed: int = 0

    @property
    def total_items(self) -> int:
        """Items the folder holds, as rows or as failure records."""
        return self.total_ok + self.total_failed

    def __repr__(self) -> str:
        """The counts and where things are; never the tracebacks (they are in
        ``failures`` and the ``_errors/`` shards)."""
        parts = [f"n_items={self.n_items:,}", f"n_ok={self.n_ok:,}", f"n_failed={self.n_failed:,}"]
        if self.n_skipped:
            parts.append(f"n_skipped={self.n_skipped:,}")
        if (self.total_ok, self.total_failed) != (self.n_ok, self.n_failed):
            parts.append(f"total_ok={self.total_ok:,}, total_failed={self.total_failed:,}")
        parts.append(f"files={len(self.files)}")
        if self.path is not None:
            parts.append(f"path={str(self.path)!r}")
        parts.append(f"duration_s={self.duration_s:.2f}")
        if self.failures:
            first = self.failures[0]
            where = f" in {str(self.path / '_errors')!r}" if self.path is not None else ""
            parts.append(
                f"failures=[{len(self.failures):,}{where}; first: item {first.index}, node "
                f"{first.node!r}, {first.error_type}: {_short(first.message)}]"
            )
        return f"MapResult({', '.join(parts)})"


def _short(text: str, limit: int = 120) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Writer(Protocol):
    """What ``map(..., writer=...)`` needs; `hypernodes_chain.io.StreamWriter` is one."""

    def open(
        self,
        *,
        graph_name: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        fingerprints: Mapping[str, str | None] | None = None,
    ) -> Container[int]:
        """Prepare the destination; return the item indices already written (to skip).

        ``fingerprints`` (node name -> code fingerprint) lets a writer refuse to resume
        output written by other code."""
        ...

    def write_columns(
        self,
        indices: Sequence[int],
        inputs: Mapping[str, Sequence[Any]],
        outputs: Mapping[str, Sequence[Any]],
        failures: Sequence[ItemFailure],
    ) -> Sequence[ItemFailure] | None:
        """Write one batch of successful items, one list per mapped input and output,
        and the batch's failures. Return the items it could not store (a value that
        does not fit the format), recorded as failures of their own."""
        ...

    def close(self, *, finished: bool = True) -> MapResult:
        """Flush everything (also after an error) and describe what was written; its
        ``failures`` are every failure that `write_columns` took or refused, in that order
        (the runner's `MapResult` shows them: keep few in memory, see `Failures`)."""
        ...
