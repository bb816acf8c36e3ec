"""`run` under Runner and AsyncRunner: outputs, pruning, node kinds, nesting and errors."""

from __future__ import annotations

import asyncio

import pytest

from hypernodes_chain import (
    Callback,
    Graph,
    MissingInputError,
    NodeError,
    NodeFinished,
    NodeStarted,
    Runner,
    StreamingChunkEvent,
    node,
)
from resources.words import clean, count

GRAPH = Graph(nodes=[clean, count], name="words")


def test_run_returns_every_output(make_runner):
    assert make_runner().run(GRAPH, inputs={"text": " Hello World "}) == {
        "cleaned": "hello world",
        "n_words": 2,
    }


def test_output_name_narrows_and_prunes(make_runner):
    calls = []

    @node
    def expensive(text: str) -> str:
        calls.append(text)
        return text

    graph = Graph([clean, count, expensive])
    assert make_runner().run(graph, {"text": "A b"}, output_name="cleaned") == {"cleaned": "a b"}
    assert make_runner().run(graph, {"text": "A b"}, output_name=["n_words"]) == {"n_words": 2}
    assert calls == []


def test_missing_input(make_runner):
    with pytest.raises(MissingInputError, match=r"'text' \(needed by 'clean'\)"):
        make_runner().run(GRAPH, inputs={})


def test_optional_inputs_use_defaults(make_runner):
    @node
    def greet(name: str, greeting: str = "hello") -> str:
        return f"{greeting} {name}"

    graph = Graph([greet])
    assert make_runner().run(graph, {"name": "ada"}) == {"greet": "hello ada"}
    assert make_runner().run(graph, {"name": "ada", "greeting": "hi"}) == {"greet": "hi ada"}


def test_tuple_outputs(make_runner):
    @node(output_name=("q", "r"))
    def div(a: int, b: int) -> tuple[int, int]:
        return divmod(a, b)

    @node
    def total(q: int, r: int) -> int:
        return q + r

    assert make_runner().run(Graph([div, total]), {"a": 7, "b": 2}) == {"q": 3, "r": 1, "total": 4}


def test_wrong_tuple_length_is_a_node_error(make_runner):
    @node(output_name=("q", "r"))
    def div(a: int) -> tuple[int, int]:
        return (a, a, a)  # type: ignore[return-value]

    with pytest.raises(
        NodeError, match=r"node 'div' failed.*declares 2 outputs.*tuple of length 3"
    ):
        make_runner().run(Graph([div]), {"a": 1})


# Runner only: an async node under the sync runner (AsyncRunner awaits it on its own loop)
def test_async_node_under_sync_runner():
    @node
    async def slow(x: int) -> int:
        await asyncio.sleep(0)
        return x * 10

    assert Runner().run(Graph([slow]), {"x": 4}) == {"slow": 40}


# Runner only: the sync runner called from inside a running event loop
def test_sync_runner_inside_running_loop_runs_async_nodes():
    @node
    async def slow(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    async def main():
        return Runner().run(Graph([slow]), {"x": 1})

    assert asyncio.run(main()) == {"slow": 2}


def test_generator_nodes_join_chunks_and_stream_events(recorder, make_runner):
    @node
    def words(text: str):
        yield from text.split()

    @node
    def tokens(text: str):
        for word in text.split():
            yield word + " "

    @node
    async def shout(text: str):
        for ch in text[:3]:
            yield ch.upper()

    rec = recorder
    out = make_runner(callbacks=[rec]).run(Graph([words, tokens, shout]), {"text": "a bc"})
    assert out == {"words": "abc", "tokens": "a bc ", "shout": "A B"}
    chunks = [(e.node, e.chunk) for e in rec.events if isinstance(e, StreamingChunkEvent)]
    expected = [
        ("words", "a"),
        ("words", "bc"),
        ("tokens", "a "),
        ("tokens", "bc "),
        ("shout", "A"),
        ("shout", " "),
        ("shout", "B"),
    ]
    if make_runner.serial:
        assert chunks == expected
    else:  # the three nodes overlap: each node's own chunks come in order (a stable sort)
        nodes = ["words", "tokens", "shout"]
        assert sorted(chunks, key=lambda chunk: nodes.index(chunk[0])) == expected


def test_generator_of_non_str_chunks_is_a_list(make_runner):
    @node
    def nums(n: int):
        yield from range(n)

    assert make_runner().run(Graph([nums]), {"n": 3}) == {"nums": [0, 1, 2]}


def test_batch_node_gets_one_element_list_during_run(make_runner):
    seen = []

    @node(output_name="emb", batch=True)
    def embed(text: list[str], scale: int = 1) -> list[int]:
        seen.append((text, scale))
        return [len(t) * scale for t in text]

    assert make_runner().run(Graph([embed]), {"text": "abc", "scale": 2}) == {"emb": 6}
    assert seen == [(["abc"], 2)]  # list-annotated params get a list, others stay plain


def test_node_error_names_node_and_inputs_and_chains(make_runner):
    @node
    def boom(x: int) -> int:
        raise ValueError(f"bad x={x}")

    with pytest.raises(
        NodeError, match=r"node 'boom' failed with ValueError: bad x=3 \(inputs: x"
    ) as info:
        make_runner().run(Graph([boom], name="g"), {"x": 3})
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.node == "boom" and info.value.index is None


def test_events_in_order(recorder, make_runner):
    rec = recorder
    make_runner(callbacks=[rec]).run(GRAPH, {"text": "a"})
    kinds = [(type(e).__name__, getattr(e, "node", None)) for e in rec.events]
    assert kinds == [
        ("GraphStarted", None),
        ("NodeStarted", "clean"),
        ("NodeFinished", "clean"),
        ("NodeStarted", "count"),
        ("NodeFinished", "count"),
        ("GraphFinished", None),
    ]
    finished = [e for e in rec.events if isinstance(e, NodeFinished)]
    assert all(e.duration >= 0 and e.cached is False and e.path == ("words",) for e in finished)


def test_callback_dispatch_to_specific_methods(make_runner):
    class Only(Callback):
        def __init__(self):
            self.started = []

        def on_node_started(self, event):
            self.started.append(event.node)

    cb = Only()
    make_runner(callbacks=cb).run(GRAPH, {"text": "a"})
    assert cb.started == ["clean", "count"]


def test_plain_callable_subscriber(make_runner):
    seen = []
    make_runner(callbacks=[seen.append]).run(GRAPH, {"text": "a"})
    assert any(isinstance(e, NodeStarted) for e in seen)


# Runner only: max_workers is Runner's thread pool
def test_max_workers_overlaps_independent_nodes():
    import threading

    barrier = threading.Barrier(2, timeout=5)

    @node
    def left(x: int) -> int:
        barrier.wait()  # deadlocks (then times out) unless both run at once
        return x + 1

    @node
    def right(x: int) -> int:
        barrier.wait()
        return x + 2

    @node
    def both(left: int, right: int) -> int:
        return left + right

    with Runner(max_workers=2) as runner:
        assert runner.run(Graph([left, right, both]), {"x": 1}) == {
            "left": 2,
            "right": 3,
            "both": 5,
        }


def test_handlers_are_accepted(make_runner):
    assert (
        make_runner().run(GRAPH, {"text": "a"}, handlers={"approve": lambda v: True})["n_words"]
        == 1
    )


# Runner only: the probe sees any call into events.py, and AsyncRunner builds an empty
# EventBus for each call (its context carries the running loop); it publishes nothing to it
def test_no_event_objects_are_built_when_nobody_listens(chain):
    import sys

    import hypernodes_chain.events as events_module

    built = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == events_module.__file__:
            built.append(frame.f_code.co_name)

    runner = Runner()
    sys.setprofile(profiler)
    try:
        runner.run(chain, {"x": 1})
        runner.map(chain, {"x": [1, 2, 3]}, map_over="x")
    finally:
        sys.setprofile(None)
    assert built == []
    with_listener = Runner(callbacks=[lambda e: None])
    sys.setprofile(profiler)
    try:
        with_listener.run(chain, {"x": 1})
    finally:
        sys.setprofile(None)
    assert "__init__" in built  # the probe does see event construction when someone listens
