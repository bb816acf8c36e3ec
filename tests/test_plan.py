from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypernodes_chain import Graph, MissingInputError, UnknownInputError, node
from hypernodes_chain.exceptions import InputConflictError
from hypernodes_chain.plan import build_plan, check_overrides


@node(output_name="a")
def fa(x: int) -> int:
    return x + 1


@node(output_name="b")
def fb(a: int) -> int:
    return a * 2


@node(output_name="c")
def fc(y: int) -> int:
    return y


@node(output_name="d")
def fd(b: int, c: int, z: int = 0) -> int:
    return b + c + z


GRAPH = Graph([fa, fb, fc, fd], name="g")


def names(plan):
    return [s.node.name for s in plan.steps]


def test_prunes_to_what_the_outputs_need():
    plan = build_plan(GRAPH, "b", {"x"})
    assert names(plan) == ["fa", "fb"]
    assert plan.outputs == ("b",)


def test_all_outputs_by_default():
    plan = build_plan(GRAPH, None, {"x", "y"})
    assert names(plan) == ["fa", "fc", "fb", "fd"]  # topological, layer by layer
    assert plan.outputs == ("a", "c", "b", "d")


def test_memoised():
    assert build_plan(GRAPH, "d", ["x", "y"]) is build_plan(GRAPH, ["d"], {"y", "x"})


def test_missing_input_names_input_and_nodes():
    with pytest.raises(
        MissingInputError, match=r"missing input for graph 'g': 'y' \(needed by 'fc'\)"
    ):
        build_plan(GRAPH, "d", {"x"})
    with pytest.raises(MissingInputError, match=r"'x' \(needed by 'fa'\), 'y' \(needed by 'fc'\)"):
        build_plan(GRAPH, "d", set())


def test_unknown_input_suggests_close_name():
    with pytest.raises(UnknownInputError, match=r"unknown input 'xx'.*did you mean 'x'\?"):
        build_plan(GRAPH, "a", {"xx"})
    with pytest.raises(UnknownInputError, match=r"unknown output 'dd'.*did you mean 'd'\?"):
        build_plan(GRAPH, "dd", {"x"})
    assert issubclass(UnknownInputError, ValueError)


def test_given_output_overrides_its_producer():
    plan = build_plan(GRAPH, "b", {"a"})
    assert names(plan) == ["fb"]


def test_optional_input_only_bound_when_given():
    plan = build_plan(GRAPH, "d", {"x", "y"})
    assert plan.steps[-1].params == ("b", "c")
    plan = build_plan(GRAPH, "d", {"x", "y", "z"})
    assert plan.steps[-1].params == ("b", "c", "z")


def _ancestors(graph, outputs):
    needed = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        prod = graph.producer_of(name)
        if prod is not None and prod.name not in needed:
            needed.add(prod.name)
            stack.extend(prod.inputs)
    return needed


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, unique=True))
def test_plan_holds_exactly_the_ancestors(outputs):
    plan = build_plan(GRAPH, outputs, {"x", "y"})
    assert set(names(plan)) == _ancestors(GRAPH, outputs)
    order = [n.name for n in GRAPH.nodes]
    assert names(plan) == sorted(names(plan), key=order.index)


# -- overrides: an input named like a computed value ----------------------------------


def test_override_that_leaves_an_input_unused_is_refused():
    plan = build_plan(GRAPH, "b", {"x", "a"})
    assert plan.shadowed == {"a": ("x",)}
    with pytest.raises(
        InputConflictError,
        match=r"graph 'g': input 'a' replaces the output 'a' of node 'fa', so input 'x' is "
        r"not used: pass one of them",
    ):
        check_overrides(plan)


def test_override_whose_inputs_are_read_elsewhere_is_fine():
    other = Graph([fa, fb, node(output_name="e")(lambda x: x)], name="g2")
    plan = build_plan(other, ["b", "e"], {"x", "a"})
    assert plan.shadowed == {}
    check_overrides(plan)
    assert sorted(names(plan)) == ["<lambda>", "fb"]


def test_override_alone_is_fine_and_requested_override_counts():
    check_overrides(build_plan(GRAPH, "b", {"a"}))
    with pytest.raises(InputConflictError, match=r"input 'a' replaces .* input 'x' is not used"):
        check_overrides(build_plan(GRAPH, "a", {"x", "a"}))  # returned as given, x unused


def test_override_names_every_input_it_leaves_unused():
    plan = build_plan(GRAPH, "d", {"x", "a", "b", "y"})
    assert plan.shadowed == {"b": ("a", "x")}
    with pytest.raises(InputConflictError, match=r"so inputs 'a', 'x' are not used"):
        check_overrides(plan)


def test_an_unused_input_without_override_is_no_conflict():
    plan = build_plan(GRAPH, "b", {"x", "y"})  # y feeds only c, which is not requested
    assert plan.shadowed == {}


# -- what the plan needs of each step --------------------------------------------------


@node(output_name=("q", "r"))
def fqr(x: int) -> tuple[int, int]:
    return x, x + 1


@node(output_name="s")
def fs(r: int) -> int:
    return r


def test_step_used_lists_the_outputs_the_plan_reads_or_returns():
    graph = Graph([fqr, fs], name="qr")
    assert build_plan(graph, "s", {"x"}).steps[0].used == ("r",)
    assert build_plan(graph, ["q", "s"], {"x"}).steps[0].used == ("q", "r")
    assert build_plan(graph, "q", {"x", "r"}).steps[0].used == ("q",)  # r is given


def test_a_given_input_that_no_node_reads_is_returned_when_requested():
    plan = build_plan(GRAPH, ["b", "extra"], {"x", "extra"})
    assert plan.outputs == ("b", "extra") and names(plan) == ["fa", "fb"]
    with pytest.raises(UnknownInputError, match=r"unknown input 'extra'"):
        build_plan(GRAPH, ["b"], {"x", "extra"})
