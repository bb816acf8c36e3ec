"""One case table, every front end: Runner and AsyncRunner give the same results."""

from __future__ import annotations

import asyncio

import pytest

from hypernodes_chain import (
    AsyncRunner,
    Graph,
    ItemFailure,
    MemoryCache,
    NodeError,
    Runner,
    node,
)
from resources.words import clean, count


class Front:
    """Calls a runner's run/map the same way whichever kind it is."""

    def __init__(self, kind, **kwargs):
        self.runner = Runner(**kwargs) if kind == "sync" else AsyncRunner(**kwargs)
        self.kind = kind

    def run(self, *args, **kwargs):
        if self.kind == "sync":
            return self.runner.run(*args, **kwargs)
        return asyncio.run(self.runner.run(*args, **kwargs))

    def map(self, *args, **kwargs):
        if self.kind == "sync":
            return self.runner.map(*args, **kwargs)
        return asyncio.run(self.runner.map(*args, **kwargs))


@pytest.fixture(params=["sync", "async"])
def front(request):
    return lambda **kw: Front(request.param, **kw)


@node
async def shout(cleaned: str) -> str:
    await asyncio.sleep(0)
    return cleaned.upper()


@node
def letters(cleaned: str):
    yield from cleaned.replace(" ", "")


@node(output_name="lengths", batch=True)
def lengths(cleaned: list[str]) -> list[int]:
    return [len(c) for c in cleaned]


GRAPH = Graph([clean, count, shout, letters, lengths], name="text")

CASES = [
    (
        "all outputs",
        {"text": " Hi There "},
        None,
        {
            "cleaned": "hi there",
            "n_words": 2,
            "shout": "HI THERE",
            "letters": "hithere",
            "lengths": 8,
        },
    ),
    ("one output", {"text": "A b"}, "n_words", {"n_words": 2}),
    ("two outputs", {"text": "A b"}, ["shout", "lengths"], {"shout": "A B", "lengths": 3}),
]


@pytest.mark.parametrize(
    ("name", "inputs", "output_name", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_run_cases(front, name, inputs, output_name, expected):
    assert front().run(GRAPH, inputs, output_name=output_name) == expected


def test_map_case(front):
    out = front().map(
        GRAPH,
        {"text": ["a b", " C "]},
        map_over="text",
        output_name=["n_words", "shout", "lengths"],
        batch_size=1,
    )
    assert out == [
        {"n_words": 2, "shout": "A B", "lengths": 3},
        {"n_words": 1, "shout": "C", "lengths": 1},
    ]


def test_product_case(front):
    @node
    def add(x: int, y: int) -> int:
        return x + y

    out = front().map(
        Graph([add]), {"x": [1, 2], "y": [10, 20]}, map_over=["x", "y"], map_mode="product"
    )
    assert [r["add"] for r in out] == [11, 21, 12, 22]


def test_collect_case(front):
    @node
    def inv(x: int) -> float:
        return 1 / x

    out = front().map(Graph([inv]), {"x": [1, 0, 2]}, map_over="x", on_error="collect")
    assert out[0] == {"inv": 1.0} and out[2] == {"inv": 0.5}
    assert isinstance(out[1], ItemFailure) and out[1].index == 1 and out[1].node == "inv"


def test_raise_case(front):
    @node
    def inv(x: int) -> float:
        return 1 / x

    with pytest.raises(NodeError, match="node 'inv' for item 1 failed with ZeroDivisionError"):
        front().map(Graph([inv]), {"x": [1, 0, 2]}, map_over="x")
    with pytest.raises(NodeError, match=r"node 'inv' failed with ZeroDivisionError"):
        front().run(Graph([inv]), {"x": 0})


def test_nesting_case(front):
    inner = Graph([clean, count], name="inner")
    gn = inner.as_node(
        name="per_doc",
        map_over="docs",
        input_mapping={"docs": "text"},
        output_mapping={"n_words": "counts"},
    )

    @node
    def total(counts: list[int]) -> int:
        return sum(counts)

    assert front().run(Graph([gn, total]), {"docs": ["a", "b c"]}) == {"counts": [1, 2], "total": 3}


def test_cache_case_same_keys_across_runners():
    calls = []

    @node
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    graph = Graph([square])
    cache = MemoryCache()
    assert Runner(cache=cache).map(graph, {"x": [1, 2]}, map_over="x") == [
        {"square": 1},
        {"square": 4},
    ]
    assert asyncio.run(AsyncRunner(cache=cache).map(graph, {"x": [1, 2, 3]}, map_over="x")) == [
        {"square": 1},
        {"square": 4},
        {"square": 9},
    ]
    assert asyncio.run(AsyncRunner(cache=cache).run(graph, {"x": 3})) == {"square": 9}
    assert calls == [1, 2, 3]


def test_handlers_case(front):
    from hypernodes_chain import interrupt

    @node
    def approve(x: int) -> str:
        return "yes" if interrupt(x, name="ok") else "no"

    runner = front()
    assert runner.run(Graph([approve]), {"x": 3}, handlers={"ok": lambda v: v > 2}) == {
        "approve": "yes"
    }
    out = runner.map(
        Graph([approve]), {"x": [1, 5]}, map_over="x", handlers={"ok": lambda v: v > 2}
    )
    assert out == [{"approve": "no"}, {"approve": "yes"}]
