"""A writer's failures of one run: the first few in memory, all of them in ``_errors/``.

`StreamWriter` encodes each failure record as it comes, commits it to an errors shard with
the next data shard, and keeps (in a `FailureLog`) only their count and the first
`KEPT_FAILURES` records. `ErrorShards` reads the others back, in the order they were
recorded, for the run's `Failures`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TextIO

from ..results import KEPT_FAILURES, Failures, ItemFailure
from ._manifest import ERRORS_DIR, ShardEntry

__all__ = ["ErrorShards", "FailureLog"]


@dataclass(frozen=True)
class ErrorShards:
    """The errors shards one run committed, read as `ItemFailure` records from a position on."""

    folder: Path
    shards: tuple[ShardEntry, ...]

    def __call__(self, start: int) -> Iterator[ItemFailure]:
        """The records from position ``start`` (0: the run's first failure) on."""
        for entry in self.shards:
            if start >= entry.rows:
                start -= entry.rows
                continue
            with self._open(entry) as lines:
                for line in islice(lines, start, None):
                    yield ItemFailure.from_record(json.loads(line))
            start = 0

    def _open(self, entry: ShardEntry) -> TextIO:
        path = self.folder / entry.file
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size != entry.size:
            msg = (
                f"the failure records of this map are no longer in {str(path)!r} (the folder "
                f"was resumed, moved or removed since); the first {KEPT_FAILURES} are in "
                f"Failures.kept"
            )
            raise FileNotFoundError(msg)
        return open(path, encoding="utf-8")


@dataclass
class FailureLog:
    """What a writer keeps of its failures: their count, the first few, and the shards."""

    n: int = 0
    kept: list[ItemFailure] = field(default_factory=list)
    shards: list[ShardEntry] = field(default_factory=list)

    def add(self, failures: Sequence[ItemFailure]) -> None:
        room = KEPT_FAILURES - len(self.kept)
        if room > 0:
            self.kept.extend(failures[:room])
        self.n += len(failures)

    def failures(self, folder: Path) -> Failures:
        """The run's failures: the kept ones, then the rest read from its shards."""
        read = ErrorShards(folder, tuple(self.shards))
        return Failures(self.kept, self.n, read, where=str(folder / ERRORS_DIR))
