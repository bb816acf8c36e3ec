from __future__ import annotations

import io

from rich.console import Console

from hypernodes_chain import Graph, node
from hypernodes_chain.viz import rich_tree, to_dot


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip()


@node(output_name="n_words")
def count(cleaned: str, sep: str = " ") -> int:
    return len(cleaned.split(sep))


def render(renderable) -> str:
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()


def test_rich_tree_text():
    inner = Graph([clean, count], name="inner")

    @node
    def report(n_words: int) -> str:
        return str(n_words)

    outer = Graph([inner.as_node(name="stats"), report], name="outer")
    assert render(rich_tree(outer)) == (
        "outer\n"
        "├── inputs: text  optional: sep\n"
        "├── stats(text, sep) → cleaned, n_words  [graph]\n"
        "│   ├── clean(text) → cleaned\n"
        "│   └── count(cleaned, sep) → n_words\n"
        "└── report(n_words) → report\n"
    )


def test_dot_source_has_every_edge(tmp_path):
    graph = Graph([clean, count], name="g")
    dot = to_dot(graph)
    assert '"text" -> "clean";' in dot
    assert '"clean" -> "count";' in dot
    assert '"sep" -> "count";' in dot
    saved = graph.visualize(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == dot
    assert saved._repr_mimebundle_()["text/plain"] == dot
