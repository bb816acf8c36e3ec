"""A value given for one output of a multi-output node (or of a nested graph) stays the given
one: the node still runs for its other outputs, and what it returns for the given name is
dropped, under `run` and `map`, with and without a cache."""

from __future__ import annotations

from hypernodes_chain import DiskCache, Graph, node


@node(output_name=("q", "r"))
def div(x: int) -> tuple[int, int]:
    return divmod(x, 2)


@node(output_name="t")
def combine(q: int, r: int) -> int:
    return q * 1000 + r


GRAPH = Graph([div, combine])


def test_a_given_output_of_a_multi_output_node_is_kept(make_runner, tmp_path):
    expect = {"q": 3, "r": 100, "t": 3100}
    for cache in (None, DiskCache(tmp_path / "cache")):
        runner = make_runner(cache=cache)
        got = runner.run(GRAPH, {"x": 7, "r": 100}, output_name=["q", "r", "t"])
        assert got == expect
        rows = runner.map(GRAPH, {"x": [7, 9], "r": 100}, map_over="x", output_name=["r", "t"])
        assert rows == [{"r": 100, "t": 3100}, {"r": 100, "t": 4100}]


def test_a_given_output_of_a_nested_graph_is_kept(make_runner):
    @node(output_name="a")
    def make_a(x: int) -> int:
        return x + 1

    @node(output_name="b")
    def make_b(x: int) -> int:
        return x + 2

    inner = Graph([make_a, make_b], name="inner")
    for nested in (inner.as_node(), inner.as_node(name="each", map_over="x")):

        @node(output_name="both")
        def both(a: object, b: object) -> tuple[object, object]:
            return (a, b)

        outer = Graph([nested, both])
        got = make_runner().run(outer, {"x": [5] if nested.map_over else 5, "b": 100})
        a = [6] if nested.map_over else 6
        assert got == {"a": a, "b": 100, "both": (a, 100)}
