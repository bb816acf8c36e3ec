"""Two ``Parallelizable`` blocks, one inside the other, and two collectors of one block:
beyond what Hamilton runs (one level, one collector), so compared with plain Python."""

from __future__ import annotations

from hamilton.htypes import Collect, Parallelizable


def group(groups: list[list[int]]) -> Parallelizable[list[int]]:
    yield from groups


def member(group: list[int]) -> Parallelizable[int]:
    yield from group


def scaled(member: int, factor: int) -> int:
    return member * factor


def group_total(scaled: Collect[int]) -> int:
    return sum(scaled)


def group_max(scaled: Collect[int]) -> int:
    return max(scaled, default=0)


def group_label(group: list[int], group_total: int, group_max: int) -> str:
    return f"{len(group)} members, total {group_total}, max {group_max}"


def labels(group_label: Collect[str]) -> list[str]:
    return list(group_label)
