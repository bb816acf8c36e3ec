"""`Graph.bind`: inputs fixed once, gone from `inputs`, given to every run and map item."""

from __future__ import annotations

import asyncio
import io
import pickle

import pytest
from rich.console import Console

from hypernodes_chain import (
    AsyncRunner,
    DiskCache,
    Graph,
    GraphStarted,
    Runner,
    UnknownInputError,
    node,
)
from hypernodes_chain.exceptions import InputConflictError
from hypernodes_chain.plan import build_plan
from hypernodes_chain.viz import rich_tree

CALLS: list[tuple[int, int, int]] = []


@node(output_name="y")
def scale(x: int, k: int, offset: int = 0) -> int:
    CALLS.append((x, k, offset))
    return x * k + offset


@node
def report(y: int) -> str:
    return f"y={y}"


GRAPH = Graph([scale, report], name="scaling")


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    CALLS.clear()


# -- the graph ------------------------------------------------------------------------------


def test_bound_names_leave_inputs_and_are_listed_in_bound():
    bound = GRAPH.bind(k=3, offset=1)
    assert bound.inputs == ("x",)
    assert bound.optional_inputs == ()
    assert dict(bound.bound) == {"k": 3, "offset": 1}
    assert bound.outputs == GRAPH.outputs and bound.nodes == GRAPH.nodes
    assert bound.name == "scaling"
    assert repr(bound) == (
        "<Graph 'scaling': 2 nodes, inputs=['x'], bound=['k', 'offset'], outputs=['y', 'report']>"
    )


def test_bind_returns_a_new_graph_and_leaves_the_old_one_alone():
    bound = GRAPH.bind(k=3)
    assert bound is not GRAPH
    assert GRAPH.inputs == ("x", "k") and GRAPH.optional_inputs == ("offset",)
    assert dict(GRAPH.bound) == {}
    with pytest.raises(TypeError):
        bound.bound["k"] = 4  # type: ignore[index]
    with pytest.raises(AttributeError, match="Graph is immutable"):
        bound.bound = {}  # type: ignore[misc]


def test_binding_again_adds_and_replaces():
    twice = GRAPH.bind(k=3).bind(offset=1).bind(k=5)
    assert dict(twice.bound) == {"k": 5, "offset": 1}
    assert twice.inputs == ("x",)
    assert Runner().run(twice, {"x": 2}) == {"y": 11, "report": "y=11"}


def test_an_unknown_name_is_an_error_with_the_close_match():
    with pytest.raises(UnknownInputError, match=r"cannot bind 'kk'.*did you mean 'k'\?") as info:
        GRAPH.bind(kk=3)
    assert "its inputs are ['x', 'k', 'offset']" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_an_output_cannot_be_bound():
    with pytest.raises(UnknownInputError, match="'y': it is an output of node 'scale'"):
        GRAPH.bind(y=3)


def test_a_bound_graph_pickles_with_its_values():
    copy = pickle.loads(pickle.dumps(GRAPH.bind(k=3)))
    assert dict(copy.bound) == {"k": 3} and copy.inputs == ("x",)
    assert Runner().run(copy, {"x": 2}) == {"y": 6, "report": "y=6"}


def test_a_plan_accepts_the_bound_names_as_given():
    """Where a plan is rebuilt from its names (a Dask worker), the bound ones are known."""
    plan = build_plan(GRAPH.bind(k=3), "y", ["x", "k"])
    assert [s.node.name for s in plan.steps] == ["scale"]


def test_rich_tree_shows_bound_values():
    outer = Graph([GRAPH.bind(k=3).as_node(name="inner")], name="outer")
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(rich_tree(outer))
    assert buf.getvalue() == (
        "outer\n"
        "├── inputs: x  optional: offset\n"
        "└── inner(x, offset) → y, report  [graph, bound k]\n"
        "    ├── scale(x, k, offset) → y\n"
        "    └── report(y) → report\n"
    )
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(rich_tree(GRAPH.bind(k="abc")))
    assert buf.getvalue().splitlines()[1] == "├── inputs: x  optional: offset  bound: k='abc'"


# -- runners --------------------------------------------------------------------------------


def test_run_and_map_use_the_bound_values():
    bound = GRAPH.bind(k=10)
    assert Runner().run(bound, {"x": 2}, output_name="y") == {"y": 20}
    assert Runner().map(bound, {"x": [1, 2, 3]}, map_over="x", output_name="y") == [
        {"y": 10},
        {"y": 20},
        {"y": 30},
    ]
    inputs = {"x": [1, 2], "offset": [0, 5]}
    rows = Runner().map(
        bound, inputs, map_over=["x", "offset"], map_mode="product", output_name="y"
    )
    assert rows == [{"y": 10}, {"y": 15}, {"y": 20}, {"y": 25}]


def test_a_bound_optional_input_replaces_the_default():
    assert Runner().run(GRAPH.bind(k=1, offset=100), {"x": 2}, output_name="y") == {"y": 102}


def test_async_runner_uses_the_bound_values():
    out = asyncio.run(AsyncRunner().run(GRAPH.bind(k=4), {"x": 2}, output_name="y"))
    assert out == {"y": 8}


def test_passing_a_bound_name_is_an_error_naming_it_as_bound():
    bound = GRAPH.bind(k=10)
    with pytest.raises(
        InputConflictError, match=r"graph 'scaling' binds 'k'.*graph.bind\(k=\.\.\.\)"
    ):
        Runner().run(bound, {"x": 2, "k": 3})
    with pytest.raises(InputConflictError, match="binds 'k'"):
        Runner().map(bound, {"x": [1], "k": 3}, map_over="x")
    with pytest.raises(InputConflictError, match="map_over cannot name it"):
        Runner().map(bound, {"x": [1]}, map_over=["x", "k"])
    assert CALLS == []


def test_graph_started_lists_the_bound_names_among_the_inputs(recorder):
    Runner(callbacks=[recorder]).run(GRAPH.bind(k=10), {"x": 2})
    started = [e for e in recorder.events if isinstance(e, GraphStarted)]
    assert sorted(started[0].inputs) == ["k", "x"]


# -- cache keys -----------------------------------------------------------------------------


def test_a_bound_value_keys_the_cache_like_the_same_constant_input(tmp_path):
    with DiskCache(tmp_path / "cache") as cache:
        runner = Runner(cache=cache)
        assert runner.run(GRAPH, {"x": 2, "k": 10}, output_name="y") == {"y": 20}
        assert runner.map(GRAPH, {"x": [1, 3], "k": 10}, map_over="x", output_name="y") == [
            {"y": 10},
            {"y": 30},
        ]
        CALLS.clear()
        bound = GRAPH.bind(k=10)
        assert runner.run(bound, {"x": 2}, output_name="y") == {"y": 20}
        assert runner.map(bound, {"x": [1, 2, 3]}, map_over="x", output_name="y") == [
            {"y": 10},
            {"y": 20},
            {"y": 30},
        ]
        assert CALLS == [], "a bound value must give the keys of the same constant input"
        assert runner.run(GRAPH.bind(k=11), {"x": 2}, output_name="y") == {"y": 22}
        assert runner.map(GRAPH.bind(k=11), {"x": [1]}, map_over="x", output_name="y") == [
            {"y": 11}
        ]
        assert CALLS == [(2, 11, 0), (1, 11, 0)], "another bound value must be another key"


# -- nested ---------------------------------------------------------------------------------


def test_as_node_of_a_bound_graph_hides_the_bound_names():
    inner = GRAPH.bind(k=10).as_node(name="inner", output_mapping={"y": "scaled"})

    @node
    def plus(scaled: int, x: int) -> int:
        return scaled + x

    outer = Graph([inner, plus], name="outer")
    assert outer.inputs == ("x",) and outer.optional_inputs == ("offset",)
    assert Runner().run(outer, {"x": 2}) == {"scaled": 20, "plus": 22}
    assert Runner().map(outer, {"x": [1, 2]}, map_over="x") == [
        {"scaled": 10, "plus": 11},
        {"scaled": 20, "plus": 22},
    ]


def test_as_node_with_map_over_of_a_bound_graph():
    per_x = GRAPH.bind(k=10).as_node(name="per_x", map_over="xs", input_mapping={"xs": "x"})
    outer = Graph([per_x], name="outer")
    assert outer.inputs == ("xs",)
    assert Runner().run(outer, {"xs": [1, 2]}) == {"y": [10, 20], "report": ["y=10", "y=20"]}
    rows = Runner().map(outer, {"xs": [[1], [2, 3]]}, map_over="xs", output_name="y")
    assert rows == [{"y": [10]}, {"y": [20, 30]}]


def test_a_nested_bound_graph_is_cached_with_and_without_map_over(tmp_path):
    per_x = GRAPH.bind(k=10).as_node(name="per_x", map_over="xs", input_mapping={"xs": "x"})
    once = GRAPH.bind(k=10).as_node(name="once")
    with DiskCache(tmp_path / "cache") as cache:
        runner = Runner(cache=cache)
        assert runner.run(Graph([per_x]), {"xs": [1, 2]}, output_name="y") == {"y": [10, 20]}
        assert runner.run(Graph([once]), {"x": 3}, output_name="y") == {"y": 30}
        assert len(CALLS) == 3
        CALLS.clear()
        assert runner.run(Graph([per_x]), {"xs": [1, 2]}, output_name="y") == {"y": [10, 20]}
        assert runner.run(Graph([once]), {"x": 3}, output_name="y") == {"y": 30}
        # the unmapped inner graph keys its nodes as the top level does
        assert runner.run(GRAPH, {"x": 3, "k": 10}, output_name="y") == {"y": 30}
        assert CALLS == [], f"cached inner nodes were computed again: {CALLS}"


def test_rebinding_a_nested_graph_changes_the_keys_downstream(tmp_path):
    """The outer consumer of a graph node chains its key from the node's fingerprint,
    which holds the bound values: another value is another key."""
    seen: list[int] = []

    @node
    def shout(report: str) -> str:
        seen.append(1)
        return report.upper()

    with DiskCache(tmp_path / "cache") as cache:
        runner = Runner(cache=cache)
        for k, want in ((10, "Y=20"), (11, "Y=22"), (10, "Y=20")):
            outer = Graph([GRAPH.bind(k=k).as_node(name="inner"), shout], name="outer")
            assert runner.run(outer, {"x": 2}, output_name="shout") == {"shout": want}
    assert len(seen) == 2, "k=10 twice is one computation; k=11 another"


def test_diagram_draws_bound_values_inside_their_graph():
    pytest.importorskip("graphviz", reason="the diagram needs the graphviz package (viz extra)")
    from hypernodes_chain.viz import to_dot

    top = to_dot(GRAPH.bind(k=3))
    assert '"bound/k" [label="k=3" fillcolor="#e5e7eb" shape=ellipse style=filled]' in top
    assert '"bound/k" -> "node/scale"' in top
    assert "input/k" not in top
    nested = to_dot(Graph([GRAPH.bind(k=3).as_node(name="inner")], name="outer"))
    assert '"bound/inner/k" -> "node/inner/scale"' in nested
