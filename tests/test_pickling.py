"""Graphs, nodes, errors and failure records survive pickle and cloudpickle.

They travel to Dask workers: the unpickled objects must equal the originals in every
derived property and must run to the same results.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from typing import Any

import pytest

from hypernodes_chain import (
    Graph,
    GraphNode,
    ItemFailure,
    Node,
    NodeError,
    Runner,
    exceptions,
    node,
)


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip().lower()


@node(output_name="n_words")
def count(cleaned: str, sep: str = " ") -> int:
    return len(cleaned.split(sep))


@node(output_name=("first", "rest"), cache=False)
def split(cleaned: str, *, sep: str = " ") -> tuple[str, str]:
    head, _, tail = cleaned.partition(sep)
    return head, tail


@node(output_name="lengths", batch=True)
def lengths(cleaned: list[str]) -> list[int]:
    return [len(c) for c in cleaned]


@node
async def shout(cleaned: str) -> str:
    return cleaned.upper()


@node
def letters(cleaned: str):  # a generator node
    yield from cleaned


def plain_total(n_words: int, lengths: int) -> int:  # wrapped by Graph, not decorated
    return n_words + lengths


class TaggedNode(Node[..., Any]):
    """A node kind with a constructor of its own (as an LLM node has)."""

    def __init__(self, func: Any, *, tag: str) -> None:
        super().__init__(func, output_name=f"{func.__name__}_{tag}")
        self.tag = tag


def text_graph() -> Graph:
    return Graph([count, clean, split, lengths, plain_total], name="text")


def edges(graph: Graph) -> set[tuple[str, str, str]]:
    """(producer, consumer, name) for every edge."""
    out = set()
    for n in graph.nodes:
        for name in n.inputs:
            producer = graph.producer_of(name)
            if producer is not None:
                out.add((producer.name, n.name, name))
    return out


def assert_same_node(a: Node[..., Any], b: Node[..., Any]) -> None:
    assert type(b) is type(a)
    for attr in (
        "name",
        "inputs",
        "optional",
        "outputs",
        "output_name",
        "parameters",
        "defaults",
        "keyword_only",
        "input_map",
        "cache",
        "batch",
        "kind",
    ):
        assert getattr(b, attr) == getattr(a, attr), attr
    if isinstance(a, GraphNode):
        assert isinstance(b, GraphNode)
        assert b.map_over == a.map_over
        assert b.output_map == a.output_map
        assert_same_graph(a.graph, b.graph)
    else:
        assert b.item_params == a.item_params
        assert [b.output_type(o) for o in b.outputs] == [a.output_type(o) for o in a.outputs]


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert type(b) is type(a)
    assert b.name == a.name
    assert [n.name for n in b.nodes] == [n.name for n in a.nodes]
    assert b.inputs == a.inputs
    assert b.optional_inputs == a.optional_inputs
    assert b.outputs == a.outputs
    assert edges(b) == edges(a)
    for x, y in zip(a.nodes, b.nodes):
        assert_same_node(x, y)
    for out in b.outputs:  # the producer table points at the graph's own nodes
        assert any(b.producer_of(out) is n for n in b.nodes)


def round_trip(obj: Any, dumps: Any) -> Any:
    return pickle.loads(dumps(obj))


# --- nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        clean,
        count,
        split,
        lengths,
        shout,
        letters,
        Node(plain_total),
        count.rename(inputs={"cleaned": "words"}, outputs={"n_words": "n"}, name="count2"),
        split.rename(outputs={"rest": "tail"}),
    ],
    ids=lambda n: n.name,
)
def test_module_level_node_round_trips_with_pickle(original):
    copy_ = round_trip(original, pickle.dumps)
    assert_same_node(original, copy_)
    assert copy_.func is original.func  # an importable function travels by reference


@pytest.mark.parametrize("func", [plain_total, clean.func], ids=["plain", "decorated"])
def test_node_subclass_with_its_own_constructor_round_trips(func):
    original = TaggedNode(func, tag="t").rename(name="tagged")
    copy_ = round_trip(original, pickle.dumps)
    assert_same_node(original, copy_)
    assert copy_.tag == "t"
    assert copy_.func is func
    assert copy_.__wrapped__ is func


def test_unpickled_node_stays_callable():
    assert round_trip(count, pickle.dumps)("a b c") == 3
    assert round_trip(clean.rename(name="c2"), pickle.dumps)("  Hi ") == "hi"


def test_node_of_closure_and_lambda_round_trips_with_cloudpickle():
    cloudpickle = pytest.importorskip("cloudpickle")
    factor = 3

    @node(output_name="y", cache=False)
    def scale(x: int, offset: int = 1) -> int:
        return x * factor + offset

    inc = Node(lambda y: y + 1, output_name="z", name="inc")
    renamed = scale.rename(inputs={"x": "w"}, name="scale_w")
    for original in (scale, inc, renamed, count):
        copy_ = round_trip(original, cloudpickle.dumps)
        assert_same_node(original, copy_)
    # a module-level @node function is sent by reference, as cloudpickle sends functions
    assert round_trip(count, cloudpickle.dumps).func is count.func
    assert round_trip(scale, cloudpickle.dumps)(2) == 7
    assert round_trip(inc, cloudpickle.dumps)(2) == 3


def test_module_registered_by_value_sends_node_functions_by_value():
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        copy_ = round_trip(count, cloudpickle.dumps)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert copy_.func is not count.func  # workers need not import this module
    assert_same_node(count, copy_)
    assert copy_("a b") == 2


# --- graphs ----------------------------------------------------------------------------

TEXTS = ["  Hello big World ", "one", "a b c d"]


def run_all(graph: Graph) -> tuple[Any, Any]:
    runner = Runner()
    return (
        runner.run(graph, {"text": TEXTS[0]}),
        runner.map(graph, {"text": TEXTS}, map_over="text"),
    )


def test_graph_round_trips_with_pickle_and_runs():
    graph = text_graph()
    copy_ = round_trip(graph, pickle.dumps)
    assert_same_graph(graph, copy_)
    assert run_all(copy_) == run_all(graph)


def test_graph_round_trips_with_cloudpickle_and_runs():
    cloudpickle = pytest.importorskip("cloudpickle")
    graph = text_graph()
    assert_same_graph(graph, round_trip(graph, cloudpickle.dumps))

    stop = {"the", "a"}

    @node(output_name="kept")
    def drop_stop_words(cleaned: str) -> list[str]:
        return [w for w in cleaned.split() if w not in stop]

    n_kept = Node(lambda kept: len(kept), output_name="n_kept", name="n_kept")
    closures = Graph([n_kept, drop_stop_words, clean], name="closures")
    copy_ = round_trip(closures, cloudpickle.dumps)
    assert_same_graph(closures, copy_)
    runner = Runner()
    inputs = {"text": "The cat and a dog"}
    assert runner.run(copy_, inputs) == runner.run(closures, inputs)
    assert runner.run(copy_, inputs)["n_kept"] == 3
    assert runner.map(copy_, {"text": TEXTS}, map_over="text") == runner.map(
        closures, {"text": TEXTS}, map_over="text"
    )


def test_renamed_copies_of_one_node_round_trip_and_run():
    twice = Graph(
        [
            clean,
            clean.rename(inputs={"text": "other"}, outputs={"cleaned": "other_clean"}, name="c2"),
            count,
            count.rename(inputs={"cleaned": "other_clean"}, outputs={"n_words": "n2"}, name="n2"),
        ],
        name="twice",
    )
    copy_ = round_trip(twice, pickle.dumps)
    assert_same_graph(twice, copy_)
    inputs = {"text": "a b", "other": "x y z"}
    assert Runner().run(copy_, inputs) == Runner().run(twice, inputs)
    assert Runner().run(copy_, inputs)["n2"] == 3


def nested_graph() -> Graph:
    inner = Graph([clean, count], name="inner")
    per_text = inner.as_node(
        "per_text",
        map_over="texts",
        input_mapping={"texts": "text"},
        output_mapping={"n_words": "counts"},
    )
    once = inner.as_node("once", input_mapping={"title": "text"})
    return Graph([per_text, once], name="outer")


def test_nested_graph_round_trips_with_pickle_and_runs():
    outer = nested_graph()
    copy_ = round_trip(outer, pickle.dumps)
    assert_same_graph(outer, copy_)
    inputs = {"texts": TEXTS, "title": "Big Title"}
    result = Runner().run(copy_, inputs)
    assert result == Runner().run(outer, inputs)
    assert result["counts"] == [3, 1, 4]
    grid = {"texts": [TEXTS, ["x"]], "title": ["t", "u v"]}
    assert Runner().map(copy_, grid, map_over=["texts", "title"]) == Runner().map(
        outer, grid, map_over=["texts", "title"]
    )


def test_graph_node_round_trips_on_its_own():
    per_text, once = nested_graph().nodes
    assert isinstance(per_text, GraphNode) and isinstance(once, GraphNode)
    for graph_node in (
        per_text,
        once,
        once.rename(inputs={"title": "heading"}, outputs={"cleaned": "c"}, name="once2"),
        once.rename(inputs={"sep": "title"}),  # two inner inputs fed by one outer name
        per_text.rename(outputs={"counts": "n"}),
    ):
        assert_same_node(graph_node, round_trip(graph_node, pickle.dumps))


def test_nested_graph_of_closures_round_trips_with_cloudpickle_and_runs():
    cloudpickle = pytest.importorskip("cloudpickle")
    suffix = "!"

    @node(output_name="loud")
    def exclaim(text: str) -> str:
        return text + suffix

    inner = Graph([exclaim], name="inner")
    outer = Graph(
        [inner.as_node("each", map_over="text"), Node(lambda loud: len(loud), output_name="n")],
        name="outer",
    )
    copy_ = round_trip(outer, cloudpickle.dumps)
    assert_same_graph(outer, copy_)
    assert Runner().run(copy_, {"text": ["a", "b"]}) == {"loud": ["a!", "b!"], "n": 2}


def test_unpickled_graph_is_still_immutable():
    copy_ = round_trip(text_graph(), pickle.dumps)
    with pytest.raises(AttributeError, match="Graph is immutable; cannot set 'name'"):
        copy_.name = "other"
    with pytest.raises(AttributeError, match="immutable"):
        copy_.nodes = ()


def test_graph_copies_are_rebuilt():
    graph = nested_graph()
    assert_same_graph(graph, copy.copy(graph))
    assert_same_graph(graph, copy.deepcopy(graph))


def test_cloudpickled_graph_with_closure_runs_in_a_fresh_interpreter(tmp_path):
    cloudpickle = pytest.importorskip("cloudpickle")
    greeting = "hello"

    @node(output_name="greeted")
    def greet(name: str, punct: str = "!") -> str:
        return f"{greeting} {name}{punct}"

    shout_ = Node(lambda greeted: greeted.upper(), output_name="shouted", name="shout")
    graph = Graph([shout_, greet], name="greetings")
    path = tmp_path / "graph.pkl"
    path.write_bytes(cloudpickle.dumps(graph))
    script = (
        "import json, pickle, sys\n"
        "from hypernodes_chain import Runner\n"
        "graph = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "runner = Runner()\n"
        "print(json.dumps({\n"
        "    'inputs': list(graph.inputs), 'optional': list(graph.optional_inputs),\n"
        "    'nodes': [n.name for n in graph.nodes],\n"
        "    'run': runner.run(graph, {'name': 'ann'}),\n"
        "    'map': runner.map(graph, {'name': ['bo', 'cy']}, map_over='name'),\n"
        "}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "inputs": ["name"],
        "optional": ["punct"],
        "nodes": ["greet", "shout"],
        "run": {"greeted": "hello ann!", "shouted": "HELLO ANN!"},
        "map": [
            {"greeted": "hello bo!", "shouted": "HELLO BO!"},
            {"greeted": "hello cy!", "shouted": "HELLO CY!"},
        ],
    }


# --- errors and failure records --------------------------------------------------------


def _all_errors() -> list[BaseException]:
    errors: list[BaseException] = []
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        if cls is NodeError:
            errors.append(NodeError("node 'f' failed", node="f", index=3, path=("outer", "f")))
        elif cls is exceptions.LLMOutputError:
            errors.append(cls("summarize", '{"title": 1', "title: Input should be a string"))
        elif cls is exceptions.EngineReplyError:
            errors.append(cls("ollama", 2, 8, None))
        elif cls is exceptions.TruncatedReplyError:
            errors.append(cls(64, '{"title": "half a ti'))
        else:
            errors.append(cls(f"a {name}"))
    return errors


@pytest.mark.parametrize("error", _all_errors(), ids=lambda e: type(e).__name__)
def test_every_error_round_trips_with_pickle(error):
    copy_ = round_trip(error, pickle.dumps)
    assert type(copy_) is type(error)
    assert str(copy_) == str(error)
    assert copy_.args == error.args
    assert copy_.__dict__ == error.__dict__


def test_node_error_keeps_node_index_path_and_notes():
    error = NodeError("node 'f' failed on item 2", node="f", index=2, path=("g", "f"))
    error.add_note("while mapping")
    try:
        raise error from ValueError("inner")
    except NodeError as raised:
        copy_ = round_trip(raised, pickle.dumps)
    assert (copy_.node, copy_.index, copy_.path) == ("f", 2, ("g", "f"))
    assert str(copy_) == "node 'f' failed on item 2"
    assert copy_.__notes__ == ["while mapping"]
    # plain pickle drops the chain; once dask is imported (dask.multiprocessing installs
    # tblib's pickling support for every exception) the cause travels too
    assert copy_.__cause__ is None or repr(copy_.__cause__) == "ValueError('inner')"
    plain = round_trip(NodeError("m", node="n"), pickle.dumps)
    assert (plain.node, plain.index, plain.path) == ("n", None, ())


@pytest.mark.parametrize(
    "error",
    [ValueError("bad item"), NodeError("node 'f' failed", node="f", index=1, path=("f",))],
    ids=lambda e: type(e).__name__,
)
def test_item_failure_round_trips_with_pickle(error):
    try:
        raise error
    except Exception as exc:
        failure = ItemFailure.from_exception(1, "f", exc, path=("outer", "f"))
    failure = failure.with_inputs({"x": [1, 2], "name": "ann"})
    copy_ = round_trip(failure, pickle.dumps)
    assert (copy_.index, copy_.node, copy_.path, copy_.traceback) == (
        failure.index,
        failure.node,
        failure.path,
        failure.traceback,
    )
    assert copy_.inputs == {"x": [1, 2], "name": "ann"}
    assert (copy_.error_type, copy_.message) == (failure.error_type, failure.message)
    assert copy_.to_record() == failure.to_record()
    if isinstance(error, NodeError):
        assert (copy_.error.node, copy_.error.index, copy_.error.path) == ("f", 1, ("f",))


def test_collected_failures_of_an_unpickled_graph_round_trip():
    @node(output_name="inv")
    def invert(x: float) -> float:
        return 1 / x

    cloudpickle = pytest.importorskip("cloudpickle")
    graph = round_trip(Graph([invert], name="inv"), cloudpickle.dumps)
    results = Runner().map(graph, {"x": [1.0, 0.0]}, map_over="x", on_error="collect")
    assert results[0] == {"inv": 1.0}
    failure = round_trip(results[1], pickle.dumps)
    assert isinstance(failure, ItemFailure)
    assert (failure.index, failure.node, failure.error_type) == (1, "invert", "ZeroDivisionError")
    assert failure.to_record() == results[1].to_record()
