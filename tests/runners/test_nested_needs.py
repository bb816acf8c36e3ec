"""A nested graph runs only the inner nodes that the outputs used outside need, mapped or
not, under `run` and `map` (node calls counted)."""

from __future__ import annotations

from collections import Counter

import pytest

from hypernodes_chain import Graph, NodeError, node

CALLS: Counter[str] = Counter()


@node(output_name="kept")
def keep(x: int) -> int:
    CALLS["keep"] += 1
    return x * 2


@node(output_name="dropped")
def drop(x: int) -> int:
    CALLS["drop"] += 1
    msg = f"drop ran for {x}"
    raise RuntimeError(msg)


@node(output_name="after")
def after_dropped(dropped: int) -> int:
    CALLS["after"] += 1
    return dropped


INNER = Graph([keep, drop, after_dropped], name="inner")


@node(output_name="report")
def report_one(kept: int) -> str:
    return f"kept {kept}"


@node(output_name="report")
def report_all(kept: list[int]) -> str:
    return f"kept {kept}"


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    CALLS.clear()


def test_nested_graph_runs_only_what_the_outer_graph_reads(make_runner) -> None:
    outer = Graph([INNER.as_node(name="inner"), report_one], name="outer")
    runner = make_runner()
    assert runner.run(outer, {"x": 3}, output_name="report") == {"report": "kept 6"}
    assert CALLS == {"keep": 1}
    assert runner.run(outer, {"x": 3}, output_name="kept") == {"kept": 6}
    assert CALLS == {"keep": 2}
    rows = runner.map(outer, {"x": [1, 2, 3]}, map_over="x", output_name="report")
    assert rows == [{"report": "kept 2"}, {"report": "kept 4"}, {"report": "kept 6"}]
    assert CALLS == {"keep": 5}
    with pytest.raises(NodeError, match=r"node 'drop' failed with RuntimeError: drop ran for 3"):
        runner.run(outer, {"x": 3}, output_name="after")  # asked for: it runs


def test_mapped_nested_graph_runs_only_what_the_outer_graph_reads(make_runner) -> None:
    block = INNER.as_node(name="per_x", map_over="xs", input_mapping={"xs": "x"})
    outer = Graph([block, report_all], name="outer")
    runner = make_runner()
    out = runner.run(outer, {"xs": [1, 2, 3]}, output_name="report")
    assert out == {"report": "kept [2, 4, 6]"}
    assert CALLS == {"keep": 3}
    rows = runner.map(outer, {"xs": [[1], [2, 3], []]}, map_over="xs", output_name="report")
    assert rows == [{"report": "kept [2]"}, {"report": "kept [4, 6]"}, {"report": "kept []"}]
    assert CALLS == {"keep": 6}


def test_two_levels_of_nesting_run_only_what_the_outermost_reads(make_runner) -> None:
    middle = Graph([INNER.as_node(name="inner")], name="middle")
    block = middle.as_node(name="per_x", map_over="xs", input_mapping={"xs": "x"})
    outer = Graph([block, report_all], name="outer")
    out = make_runner().run(outer, {"xs": [5, 6]}, output_name=["report", "kept"])
    assert out == {"report": "kept [10, 12]", "kept": [10, 12]}
    assert CALLS == {"keep": 2}
