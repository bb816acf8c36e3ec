"""A compact set of item indices, stored as sorted half-open intervals.

Resuming a map over a million items must not cost a million-entry ``set``: the indices a
writer has already stored are nearly always long runs (one per shard), so they are kept as
``[start, stop)`` pairs and looked up with ``bisect``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["IndexSet", "ranges_of"]


def ranges_of(indices: list[int]) -> list[list[int]]:
    """Merge indices (any order, duplicates allowed) into sorted ``[start, stop)`` runs."""
    if not indices:
        return []
    first, last = indices[0], indices[-1]
    if last - first + 1 == len(indices) and indices == list(range(first, last + 1)):
        return [[first, last + 1]]  # the usual shard: one run, checked at C speed
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


class IndexSet:
    """An immutable set of non-negative ints, held as sorted disjoint ``[start, stop)`` runs."""

    __slots__ = ("_len", "_starts", "_stops")

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        pairs = sorted((int(a), int(b)) for a, b in ranges if int(b) > int(a))
        starts: list[int] = []
        stops: list[int] = []
        for a, b in pairs:
            if stops and a <= stops[-1]:
                stops[-1] = max(stops[-1], b)
            else:
                starts.append(a)
                stops.append(b)
        self._starts = starts
        self._stops = stops
        self._len = sum(b - a for a, b in zip(starts, stops, strict=True))

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        pos = bisect_right(self._starts, index) - 1
        return pos >= 0 and index < self._stops[pos]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for a, b in zip(self._starts, self._stops, strict=True):
            yield from range(a, b)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexSet):
            return self.ranges == other.ranges
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` runs, in order."""
        return list(zip(self._starts, self._stops, strict=True))

    def __repr__(self) -> str:
        shown = ", ".join(f"{a}..{b - 1}" for a, b in self.ranges[:4])
        more = ", ..." if len(self._starts) > 4 else ""
        return f"IndexSet([{shown}{more}], n={self._len})"
