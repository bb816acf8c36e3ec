from __future__ import annotations

import pytest

from hypernodes_chain import (
    CycleError,
    DuplicateOutputError,
    Graph,
    GraphError,
    GraphTypeError,
    node,
)


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip().lower()


@node(output_name="n_words")
def count(cleaned: str, sep: str = " ") -> int:
    return len(cleaned.split(sep))


def test_edges_inputs_outputs_and_topological_order():
    graph = Graph(nodes=[count, clean])  # order in the list does not matter
    assert [n.name for n in graph.nodes] == ["clean", "count"]
    assert graph.inputs == ("text",)
    assert graph.optional_inputs == ("sep",)
    assert graph.outputs == ("cleaned", "n_words")


def test_input_required_by_one_node_is_required():
    @node
    def other(sep: str) -> str:
        return sep

    graph = Graph(nodes=[clean, count, other])
    assert "sep" in graph.inputs and "sep" not in graph.optional_inputs


def test_plain_functions_are_wrapped():
    def inc(x: int) -> int:
        return x + 1

    graph = Graph([inc])
    assert graph.outputs == ("inc",)


def test_immutable_and_no_run_method():
    graph = Graph(nodes=[clean])
    with pytest.raises(AttributeError, match="Graph is immutable"):
        graph.name = "other"
    assert not hasattr(graph, "run")
    assert isinstance(graph.nodes, tuple)


def test_duplicate_output_names_both_nodes():
    @node(output_name="cleaned")
    def clean2(text: str) -> str:
        return text

    with pytest.raises(
        DuplicateOutputError, match=r"'cleaned' is produced by two nodes: 'clean' and 'clean2'"
    ):
        Graph(nodes=[clean, clean2])
    assert issubclass(DuplicateOutputError, ValueError)
    assert issubclass(DuplicateOutputError, GraphError)


def test_cycle_is_printed_as_a_path():
    @node(output_name="b")
    def f(a: int) -> int:
        return a

    @node(output_name="c")
    def g(b: int) -> int:
        return b

    @node(output_name="a")
    def h(c: int) -> int:
        return c

    @node(output_name="out")
    def tail(a: int) -> int:
        return a

    with pytest.raises(
        CycleError, match=r"cycle: (f -> g -> h -> f|g -> h -> f -> g|h -> f -> g -> h)"
    ):
        Graph(nodes=[tail, f, g, h])
    assert issubclass(CycleError, ValueError)


def test_self_loop_is_a_cycle():
    @node(output_name="x")
    def loop(x: int) -> int:
        return x

    with pytest.raises(CycleError, match="loop -> loop"):
        Graph([loop])


def test_type_clash_names_both_nodes_and_types():
    @node(output_name="n")
    def make(text: str) -> str:
        return text

    @node
    def use(n: int) -> int:
        return n

    with pytest.raises(
        GraphTypeError, match=r"'make' returns str but node 'use' expects int for parameter 'n'"
    ):
        Graph([make, use])
    assert issubclass(GraphTypeError, TypeError)


@pytest.mark.parametrize(
    ("produced", "wanted"),
    [
        (int, float),
        (bool, int),
        (list[int], list),
        (int, "int | None"),
        (dict[str, int], dict),
    ],
)
def test_compatible_types_pass(produced, wanted):
    wanted_t = int | None if wanted == "int | None" else wanted

    def make(x: int):
        return x

    make.__annotations__["return"] = produced

    def use(made):
        return made

    use.__annotations__["made"] = wanted_t
    Graph([node(output_name="made")(make), node(use)])


def test_generic_args_clash():
    @node(output_name="xs")
    def make(x: int) -> list[str]:
        return [str(x)]

    @node
    def use(xs: list[int]) -> int:
        return sum(xs)

    with pytest.raises(GraphTypeError, match=r"list\[str\].*list\[int\]"):
        Graph([make, use])


def test_batch_node_list_param_checked_against_item_type():
    @node(output_name="text")
    def make(x: int) -> str:
        return str(x)

    @node(output_name="emb", batch=True)
    def embed_ok(text: list[str]) -> list[int]:
        return [len(t) for t in text]

    @node(output_name="emb", batch=True)
    def embed_bad(text: list[int]) -> list[int]:
        return text

    Graph([make, embed_ok])
    with pytest.raises(
        GraphTypeError, match=r"'make' returns str but node 'embed_bad' expects int"
    ):
        Graph([make, embed_bad])


def test_batch_producer_item_type_feeds_plain_consumer():
    @node(output_name="emb", batch=True)
    def embed(text: list[str]) -> list[int]:
        return [len(t) for t in text]

    @node
    def bad(emb: str) -> str:
        return emb

    with pytest.raises(GraphTypeError, match="'embed' returns int but node 'bad' expects str"):
        Graph([embed, bad])


def test_renamed_node_used_twice():
    @node(output_name="y")
    def inc(x: int) -> int:
        return x + 1

    graph = Graph([inc, inc.rename(inputs={"x": "y"}, outputs={"y": "z"}, name="inc2")])
    assert graph.inputs == ("x",)
    assert graph.outputs == ("y", "z")


def test_as_node_mappings_and_errors():
    inner = Graph([clean, count], name="inner")
    gn = inner.as_node(input_mapping={"raw": "text"}, output_mapping={"n_words": "words"})
    assert gn.name == "inner"
    assert gn.inputs == ("raw", "sep")
    assert gn.outputs == ("words",)
    outer = Graph([gn])
    assert outer.inputs == ("raw",)
    assert outer.optional_inputs == ("sep",)
    with pytest.raises(ValueError, match=r"input_mapping names inner inputs \['nope'\]"):
        inner.as_node(input_mapping={"x": "nope"})
    with pytest.raises(ValueError, match=r"output_mapping names outputs \['nope'\]"):
        inner.as_node(output_mapping={"nope": "x"})
    with pytest.raises(ValueError, match=r"map_over names \['zzz'\]"):
        inner.as_node(map_over="zzz")
    with pytest.raises(TypeError, match="not callable"):
        gn(1)


def test_walk_is_depth_first_in_topological_order_through_two_levels_of_nesting():
    @node(output_name="shouted")
    def shout(cleaned: str) -> str:
        return cleaned.upper()

    @node(output_name="length")
    def size(shouted: str) -> int:
        return len(shouted)

    @node(output_name="text")
    def load(path: str) -> str:
        return path

    @node(output_name="summary")
    def report(n_words: int, length: int) -> str:
        return f"{n_words} words, {length} chars"

    innermost = Graph([size, shout], name="innermost")
    middle = Graph([innermost.as_node(), count, clean], name="middle")
    outer = Graph([report, middle.as_node(name="mid"), load], name="outer")
    assert [n.name for n in middle.nodes] == ["clean", "innermost", "count"]

    walked = list(outer.walk())
    # each graph node comes right before its own graph's walk, then the next sibling
    assert [n.name for n in walked] == [
        "load",
        "mid",
        "clean",
        "innermost",
        "shout",
        "size",
        "count",
        "report",
    ]
    assert walked[2] is clean and walked[4] is shout and walked[6] is count
    assert [id(n) for n in middle.walk()] == [id(n) for n in walked[2:7]]
    assert [id(n) for n in outer.walk()] == [id(n) for n in walked]  # the same every time
