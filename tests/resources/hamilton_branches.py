"""A Hamilton dataflow whose ``Parallelizable`` block feeds two collectors: ``ok`` and
``fails`` (which always raises). ``CALLS`` counts the calls of each block node."""

from __future__ import annotations

from collections import Counter

from hamilton.htypes import Collect, Parallelizable

CALLS: Counter[str] = Counter()


def item(n: int) -> Parallelizable[int]:
    yield from range(n)


def ok(item: int) -> int:
    CALLS["ok"] += 1
    return item * 2


def fails(item: int) -> int:
    CALLS["fails"] += 1
    msg = f"fails ran for item {item}"
    raise RuntimeError(msg)


def total_ok(ok: Collect[int]) -> int:
    return sum(ok)


def total_fails(fails: Collect[int]) -> int:
    return sum(fails)
