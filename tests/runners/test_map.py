"""`map` under Runner and AsyncRunner, and Runner.imap: zip and product, constants, laziness,
batches, errors."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypernodes_chain import (
    BatchFinished,
    Graph,
    ItemFailure,
    MapInputError,
    NodeError,
    NodeFinished,
    NodeStarted,
    Runner,
    UnknownInputError,
    node,
)


@node
def add(x: int, y: int) -> int:
    return x + y


ADD = Graph([add], name="add")


def test_zip_map_in_order(chain, make_runner):
    out = make_runner().map(chain, {"x": [1, 2, 3]}, map_over="x")
    assert out == [{"a": 2, "b": 4, "c": 1}, {"a": 3, "b": 6, "c": 3}, {"a": 4, "b": 8, "c": 5}]


def test_output_name_narrows(chain, make_runner):
    assert make_runner().map(chain, {"x": [1, 2]}, map_over="x", output_name="c") == [
        {"c": 1},
        {"c": 3},
    ]


def test_constants_and_zip_of_two(make_runner):
    assert make_runner().map(ADD, {"x": [1, 2], "y": 10}, map_over="x") == [
        {"add": 11},
        {"add": 12},
    ]
    out = make_runner().map(ADD, {"x": [1, 2], "y": [10, 20]}, map_over=["x", "y"])
    assert out == [{"add": 11}, {"add": 22}]


def test_product_mode(make_runner):
    out = make_runner().map(
        ADD, {"x": [1, 2], "y": [10, 20, 30]}, map_over=["x", "y"], map_mode="product"
    )
    assert [r["add"] for r in out] == [11, 21, 31, 12, 22, 32]


def test_unequal_zip_lengths_is_an_error(make_runner):
    with pytest.raises(MapInputError, match=r"unequal lengths \{'x': 2, 'y': 3\}"):
        make_runner().map(ADD, {"x": [1, 2], "y": [1, 2, 3]}, map_over=["x", "y"])


def test_unequal_generators_detected_lazily(make_runner):
    def gen(n):
        yield from range(n)

    with pytest.raises(MapInputError, match=r"'x' ended after 2 items but \['y'\] have more"):
        make_runner().map(ADD, {"x": gen(2), "y": gen(3)}, map_over=["x", "y"], batch_size=1)


def test_map_over_must_be_in_inputs(make_runner):
    with pytest.raises(UnknownInputError, match=r"map_over names \['z'\]"):
        make_runner().map(ADD, {"x": [1], "y": 1}, map_over="z")


def test_string_is_not_a_map_input(make_runner):
    with pytest.raises(MapInputError, match="map input 'x' must be an iterable of items"):
        make_runner().map(ADD, {"x": "abc", "y": 1}, map_over="x")


def test_bad_arguments(make_runner):
    with pytest.raises(ValueError, match="map_mode must be one of"):
        make_runner().map(ADD, {"x": [1], "y": 1}, map_over="x", map_mode="cross")
    with pytest.raises(ValueError, match="on_error must be one of"):
        make_runner().map(ADD, {"x": [1], "y": 1}, map_over="x", on_error="ignore")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make_runner().map(ADD, {"x": [1], "y": 1}, map_over="x", batch_size=0)


@given(
    st.lists(st.integers(), max_size=12),
    st.lists(st.integers(), max_size=6),
    st.integers(min_value=1, max_value=5),
)
@settings(max_examples=40, deadline=None)
def test_zip_and_product_counts(make_runner, xs, ys, batch_size):
    prod = make_runner().map(
        ADD, {"x": xs, "y": ys}, map_over=["x", "y"], map_mode="product", batch_size=batch_size
    )
    assert [r["add"] for r in prod] == [x + y for x, y in itertools.product(xs, ys)]
    zs = ys[: len(xs)] + [0] * max(0, len(xs) - len(ys))
    zipped = make_runner().map(ADD, {"x": xs, "y": zs}, map_over=["x", "y"], batch_size=batch_size)
    assert [r["add"] for r in zipped] == [x + y for x, y in zip(xs, zs)]


def test_batch_node_called_once_per_batch_with_lists_and_constants(make_runner):
    calls = []

    @node(output_name="emb", batch=True)
    def embed(text: list[str], scale: int) -> list[int]:
        calls.append((list(text), scale))
        return [len(t) * scale for t in text]

    graph = Graph([embed])
    out = make_runner().map(
        graph, {"text": ["a", "bb", "ccc"], "scale": 2}, map_over="text", batch_size=2
    )
    assert out == [{"emb": 2}, {"emb": 4}, {"emb": 6}]
    order = list if make_runner.serial else sorted  # AsyncRunner: both batches out at once
    assert order(calls) == [(["a", "bb"], 2), (["ccc"], 2)]


def test_batch_node_wrong_length_is_an_error(make_runner):
    @node(output_name="emb", batch=True)
    def embed(text: list[str]) -> list[int]:
        return [1]

    with pytest.raises(
        NodeError,
        match=r"batch node 'embed' must return a list with one result per item: got list of length 1 for 2 items",
    ):
        make_runner().map(Graph([embed]), {"text": ["a", "b"]}, map_over="text")


def test_constant_only_node_runs_once_per_batch(make_runner):
    calls = []

    @node
    def model(name: str) -> str:
        calls.append(name)
        return name.upper()

    @node
    def apply(model: str, x: int) -> str:
        return f"{model}{x}"

    graph = Graph([model, apply])
    out = make_runner().map(graph, {"name": "m", "x": [1, 2, 3]}, map_over="x", output_name="apply")
    assert out == [{"apply": "M1"}, {"apply": "M2"}, {"apply": "M3"}]
    assert calls == ["m"]


def test_on_error_raise_names_item_index(make_runner):
    @node
    def inv(x: int) -> float:
        return 1 / x

    with pytest.raises(
        NodeError, match=r"node 'inv' for item 2 failed with ZeroDivisionError"
    ) as info:
        make_runner().map(Graph([inv]), {"x": [1, 2, 0, 4]}, map_over="x")
    assert info.value.index == 2
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_on_error_collect_keeps_failures_in_place(chain, make_runner):
    @node
    def inv(x: int, c: int) -> float:
        return c / x

    graph = Graph([*chain.nodes, inv], name="chain")
    out = make_runner().map(
        graph,
        {"x": [1, 2, 0, 4, 1]},
        map_over="x",
        on_error="collect",
        output_name="inv",
        batch_size=2,
    )
    assert [type(r).__name__ for r in out] == ["dict", "dict", "ItemFailure", "dict", "dict"]
    assert out[0] == {"inv": 1.0} and out[3] == {"inv": 7 / 4}
    failure = out[2]
    assert isinstance(failure, ItemFailure)
    assert failure.index == 2 and failure.node == "inv" and failure.path == ("chain",)
    assert isinstance(failure.error, ZeroDivisionError)
    assert "ZeroDivisionError" in failure.traceback


def test_collect_skips_downstream_of_failed_item(make_runner):
    seen = []

    @node
    def first(x: int) -> int:
        if x == 1:
            raise ValueError("one")
        return x

    @node
    def second(first: int) -> int:
        seen.append(first)
        return first

    out = make_runner().map(
        Graph([first, second]), {"x": [0, 1, 2]}, map_over="x", on_error="collect"
    )
    assert seen == [0, 2]
    assert out[1].node == "first" and out[0] == {"first": 0, "second": 0}


# imap: Runner only (AsyncRunner has none)
def test_imap_is_lazy_and_ordered(chain):
    consumed = []

    def source():
        for i in range(10):
            consumed.append(i)
            yield i

    it = Runner().imap(chain, {"x": source()}, map_over="x", batch_size=3, output_name="c")
    first = next(it)
    assert first == {"c": -1}
    assert consumed == [0, 1, 2]
    rest = list(it)
    assert [r["c"] for r in rest] == [2 * (i + 1) - 3 for i in range(1, 10)]


def test_imap_memory_is_bounded_by_batch(chain):
    def source(n):
        yield from range(n)

    def peak(n):
        tracemalloc.start()
        for _ in Runner().imap(chain, {"x": source(n)}, map_over="x", batch_size=256):
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, big = peak(2_000), peak(40_000)
    assert big < small * 3  # 20x the items, nowhere near 20x the memory


def test_node_events_are_per_batch(chain, recorder, make_runner):
    rec = recorder
    make_runner(callbacks=[rec]).map(chain, {"x": list(range(10))}, map_over="x", batch_size=4)
    started = [e for e in rec.events if isinstance(e, NodeStarted)]
    assert len(started) == 9  # 3 nodes x 3 batches, not 30
    assert [e.n_items for e in started if e.node == "add_one"] == [4, 4, 2]
    batches = [e for e in rec.events if isinstance(e, BatchFinished)]
    assert [(b.start, b.n_items, b.n_done) for b in batches] == [(0, 4, 4), (4, 4, 8), (8, 2, 10)]
    assert type(rec.events[0]).__name__ == "MapStarted" and rec.events[0].total == 10
    assert type(rec.events[-1]).__name__ == "MapFinished"
    assert all(e.index is None for e in rec.events if isinstance(e, NodeFinished))


# Runner only: max_workers is Runner's thread pool
def test_thread_pool_map_matches_serial(chain):
    xs = list(range(1000))
    serial = Runner().map(chain, {"x": xs}, map_over="x", batch_size=128)
    with Runner(max_workers=4) as pooled:
        assert pooled.map(chain, {"x": xs}, map_over="x", batch_size=128) == serial


def test_nested_graph_inside_map(chain, make_runner):
    outer = Graph([chain.as_node(name="sub", output_mapping={"c": "c"})], name="outer")
    out = make_runner().map(outer, {"x": [1, 2]}, map_over="x")
    assert out == [{"c": 1}, {"c": 3}]


def test_async_and_generator_nodes_in_map(make_runner):
    @node
    async def aplus(x: int) -> int:
        return x + 1

    @node
    def spell(aplus: int):
        yield from str(aplus)

    out = make_runner().map(Graph([aplus, spell]), {"x": [9, 41]}, map_over="x")
    assert out == [{"aplus": 10, "spell": "10"}, {"aplus": 42, "spell": "42"}]


def test_collect_when_every_item_fails(tmp_path, make_runner):
    from hypernodes_chain.io import StreamWriter

    @node
    def boom(x: int) -> int:
        raise ValueError(f"no {x}")

    @node
    def after(boom: int) -> int:
        return boom

    graph = Graph([boom, after])
    out = make_runner().map(graph, {"x": [1, 2]}, map_over="x", on_error="collect")
    assert [(f.index, f.node) for f in out] == [(0, "boom"), (1, "boom")]
    result = make_runner().map(
        graph,
        {"x": [1, 2]},
        map_over="x",
        on_error="collect",
        writer=StreamWriter(tmp_path / "out"),
    )
    assert (result.n_items, result.n_ok, result.n_failed) == (2, 0, 2)
