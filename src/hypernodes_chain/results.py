"""Plain records that runners hand back: a failed item, and the summary of a streamed map."""

from __future__ import annotations

import traceback as _tb
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ItemFailure", "MapResult", "Writer"]


@dataclass(frozen=True)
class ItemFailure:
    """One item of a ``map`` that failed under ``on_error="collect"``.

    It stands in the item's place in the returned list (and goes to the errors shard
    of a writer), so nothing is dropped silently.
    """

    index: int
    node: str
    error: BaseException
    traceback: str = ""
    path: tuple[str, ...] = ()

    @classmethod
    def from_exception(
        cls, index: int, node: str, error: BaseException, path: tuple[str, ...] = ()
    ) -> ItemFailure:
        text = "".join(_tb.format_exception(type(error), error, error.__traceback__))
        # keep the text, drop the frames: they pin every local of the failed call (whole
        # batch columns) in memory for as long as the record lives
        error.__traceback__ = None
        return cls(index=index, node=node, error=error, traceback=text, path=path)

    @property
    def error_type(self) -> str:
        return type(self.error).__name__

    @property
    def message(self) -> str:
        return str(self.error)

    def to_record(self) -> dict[str, object]:
        """A JSON-ready dict: ``_index``, node, error type, message, traceback."""
        return {
            "_index": self.index,
            "node": self.node,
            "path": list(self.path),
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
        }


@dataclass
class MapResult:
    """What ``map(..., writer=...)`` returns instead of a list."""

    n_items: int = 0
    n_ok: int = 0
    n_failed: int = 0
    files: list[Path] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    duration_s: float = 0.0
    path: Path | None = None
    n_skipped: int = 0


class Writer(Protocol):
    """What ``map(..., writer=...)`` needs; `hypernodes_chain.io.StreamWriter` is one."""

    def open(
        self, *, graph_name: str, input_names: Sequence[str], output_names: Sequence[str]
    ) -> Container[int]:
        """Prepare the destination; return the item indices already written (to skip)."""
        ...

    def write_columns(
        self,
        indices: Sequence[int],
        inputs: Mapping[str, Sequence[Any]],
        outputs: Mapping[str, Sequence[Any]],
        failures: Sequence[ItemFailure],
    ) -> None:
        """Write one batch of successful items, one list per mapped input and output,
        and the batch's failures."""
        ...

    def close(self, *, finished: bool = True) -> MapResult:
        """Flush everything (also after an error) and describe what was written."""
        ...
