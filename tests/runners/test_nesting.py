"""Graphs used as nodes: mappings, map_over, events with paths, cache reaching inner nodes."""

from __future__ import annotations

import pytest

from hypernodes_chain import Graph, MemoryCache, NodeError, NodeFinished, node
from resources.words import clean, count

INNER = Graph([clean, count], name="inner")


def test_nested_exposes_every_inner_output(make_runner):
    @node
    def shout(cleaned: str) -> str:
        return cleaned.upper()

    outer = Graph([INNER.as_node(), shout], name="outer")
    assert make_runner().run(outer, {"text": " Hi There "}) == {
        "cleaned": "hi there",
        "n_words": 2,
        "shout": "HI THERE",
    }


def test_nested_with_mappings(make_runner):
    gn = INNER.as_node(
        name="stats", input_mapping={"doc": "text"}, output_mapping={"n_words": "size"}
    )

    @node
    def report(size: int) -> str:
        return f"{size} words"

    outer = Graph([gn, report])
    assert make_runner().run(outer, {"doc": "a b c"}) == {"size": 3, "report": "3 words"}


def test_nested_map_over_gives_lists_in_order(make_runner):
    gn = INNER.as_node(
        name="per_doc",
        map_over="docs",
        input_mapping={"docs": "text"},
        output_mapping={"n_words": "counts"},
    )

    @node
    def total(counts: list[int]) -> int:
        return sum(counts)

    outer = Graph([gn, total], name="outer")
    out = make_runner().run(outer, {"docs": ["a", "b c", "d e f"]})
    assert out == {"counts": [1, 2, 3], "total": 6}


def test_nested_events_carry_path_and_cache_reaches_inner_nodes(recorder, make_runner):
    calls = []

    @node(output_name="cleaned")
    def clean2(text: str) -> str:
        calls.append(text)
        return text.lower()

    inner = Graph([clean2], name="inner")
    outer = Graph([inner.as_node(name="sub")], name="outer")
    rec = recorder
    runner = make_runner(cache=MemoryCache(), callbacks=[rec])
    assert runner.run(outer, {"text": "A"}) == {"cleaned": "a"}
    assert runner.run(outer, {"text": "A"}) == {"cleaned": "a"}
    assert calls == ["A"]
    inner_events = [e for e in rec.events if isinstance(e, NodeFinished) and e.node == "clean2"]
    assert [e.path for e in inner_events] == [("outer", "sub"), ("outer", "sub")]
    assert [e.cached for e in inner_events] == [False, True]


def test_error_inside_nested_names_inner_node(make_runner):
    @node
    def boom(text: str) -> str:
        raise RuntimeError("inner boom")

    outer = Graph([Graph([boom], name="inner").as_node(name="sub")], name="outer")
    with pytest.raises(
        NodeError,
        match=r"node 'sub' failed inside: node 'boom' failed with RuntimeError: inner boom",
    ) as info:
        make_runner().run(outer, {"text": "x"})
    assert info.value.node == "boom"
    assert info.value.path == ("outer", "sub")


def test_nested_map_over_an_empty_list(make_runner):
    gn = INNER.as_node(name="per_doc", map_over="docs", input_mapping={"docs": "text"})
    assert make_runner().run(Graph([gn]), {"docs": []}) == {"cleaned": [], "n_words": []}
