"""A Hamilton dataflow with a ``Parallelizable`` / ``Collect`` block: each url is fetched and
measured on its own, then the sizes are collected."""

from __future__ import annotations

from hamilton.htypes import Collect, Parallelizable


def urls(prefix: str, n_pages: int) -> list[str]:
    return [f"{prefix}/page{i}" for i in range(n_pages)]


def url(urls: list[str]) -> Parallelizable[str]:
    """One url at a time."""
    yield from urls


def body(url: str, repeat: int = 2) -> str:
    return url.upper() * repeat


def size(body: str, bonus: int) -> int:
    return len(body) + bonus


def total_size(size: Collect[int]) -> int:
    """The sizes of every page, added up."""
    return sum(size)


def mean_size(total_size: int, n_pages: int) -> float:
    return total_size / n_pages if n_pages else 0.0
