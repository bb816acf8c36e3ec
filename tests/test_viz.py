from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from hypernodes_chain import Graph, node
from hypernodes_chain.viz import DotNotFoundError, print_tree, rich_tree, to_dot

pytest.importorskip("graphviz", reason="the diagram needs the graphviz package (viz extra)")

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz's `dot` program is not on PATH (apt-get install graphviz)",
)


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip()


@node(output_name="n_words")
def count(cleaned: str, sep: str = " ") -> int:
    return len(cleaned.split(sep))


@node(output_name="total")
def total(n_words: list[int]) -> int:
    return sum(n_words)


@node
def report(n_words: int) -> str:
    return str(n_words)


def render(renderable) -> str:
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()


def nested() -> Graph:
    """texts -> [per_text: clean -> count, mapped] -> total; the inner graph holds another."""
    words = Graph([clean, count], name="words")
    deep = Graph([words.as_node(name="inner")], name="deep")
    per_text = deep.as_node(name="per_text", map_over="texts", input_mapping={"texts": "text"})
    return Graph([per_text, total], name="corpus")


def block(dot: str, header: str) -> list[str]:
    """The lines of the `subgraph` statement opened by ``header``, up to its closing brace."""
    lines = dot.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == header + " {")
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    end = next(i for i in range(start, len(lines)) if lines[i] == indent + "}")
    return lines[start + 1 : end]


def test_rich_tree_text():
    inner = Graph([clean, count], name="inner")
    outer = Graph([inner.as_node(name="stats"), report], name="outer")
    assert render(rich_tree(outer)) == (
        "outer\n"
        "├── inputs: text  optional: sep\n"
        "├── stats(text, sep) → cleaned, n_words  [graph]\n"
        "│   ├── clean(text) → cleaned\n"
        "│   └── count(cleaned, sep) → n_words\n"
        "└── report(n_words) → report\n"
    )


def test_print_tree_and_rich_print_show_the_tree():
    graph = Graph([clean, count], name="g")
    buf = io.StringIO()
    print_tree(graph, console=Console(file=buf, width=80, color_system=None))
    expected = "g\n├── inputs: text  optional: sep\n├── clean(text) → cleaned\n└── count(cleaned, sep) → n_words\n"
    assert buf.getvalue() == expected
    assert render(graph) == expected  # through Graph.__rich__


def test_dot_draws_nodes_inputs_and_outputs():
    dot = to_dot(Graph([clean, count], name="g"))
    assert '"input/text" [label=text fillcolor="#dbeafe" shape=ellipse style=filled]' in dot
    assert 'label=sep fillcolor="#dbeafe" shape=ellipse style="filled,dashed"' in dot
    assert '"output/n_words" [label=n_words fillcolor="#dcfce7" peripheries=2' in dot
    assert "output/cleaned" not in dot  # read by count: not a final output
    # name over outputs on two lines, as an HTML label (no escaped "\n" left in a label)
    assert '<<b>clean</b><br/><font point-size="10">→ cleaned</font>>' in dot
    assert "\\n" not in dot
    edges = set(re.findall(r'^\t("[^"]+" -> "[^"]+")', dot, flags=re.M))
    assert edges == {
        '"input/text" -> "node/clean"',
        '"node/clean" -> "node/count"',
        '"input/sep" -> "node/count"',
        '"node/count" -> "output/n_words"',
    }


def test_nested_graphs_are_clusters_and_mapped_ones_are_marked():
    dot = to_dot(nested())
    outer = block(dot, "subgraph cluster_per_text")
    assert any("label=<<b>per_text</b><br/>map over texts>" in line for line in outer)
    inner = block(dot, 'subgraph "cluster_per_text/inner"')
    assert any("label=<<b>inner</b>>" in line for line in inner)  # not mapped: no "map over"
    inner_nodes = [line.split(" [")[0].strip() for line in inner if "[label=<" in line]
    assert inner_nodes == ['"node/per_text/inner/clean"', '"node/per_text/inner/count"']
    assert not any("->" in line for line in outer)  # edges sit at top level, outside clusters
    # edges cross the cluster's border straight to the inner nodes that read the value
    assert '"input/texts" -> "node/per_text/inner/clean"' in dot
    assert '"node/per_text/inner/count" -> "node/total"' in dot
    assert '"node/per_text/inner/clean" -> "output/cleaned"' in dot


def test_renamed_inputs_and_outputs_label_their_edges():
    dot = to_dot(nested())
    labelled = [line.strip() for line in dot.splitlines() if "->" in line and "label=" in line]
    # per_text maps the outer input texts to the inner text, and nothing else is renamed
    assert labelled == ['"input/texts" -> "node/per_text/inner/clean" [label="texts → text"]']
    inner = Graph([count], name="inner")
    renamed = Graph([clean, inner.as_node(name="counting", output_mapping={"n_words": "n"})])
    assert '"node/counting/count" -> "output/n" [label="n_words → n"]' in to_dot(renamed)


def test_show_types_labels_edges():
    typed = to_dot(nested(), show_types=True)
    assert '"input/texts" -> "node/per_text/inner/clean" [label="texts → text: str"]' in typed
    assert '"node/per_text/inner/count" -> "node/total" [label="list[int]"]' in typed
    assert '"node/total" -> "output/total" [label=int]' in typed


def test_save_dot_source_needs_no_dot_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `dot` to be found
    graph = nested()
    diagram = graph.visualize(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == diagram.source == to_dot(graph)
    assert str(diagram) == diagram.source


def test_without_dot_a_clear_error_and_no_raw_dot_in_jupyter(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    diagram = nested().visualize()
    with pytest.raises(
        DotNotFoundError, match=r"`dot` program on PATH; .*apt-get install graphviz"
    ):
        diagram.save(tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
    with pytest.raises(RuntimeError, match="brew install graphviz"):
        nested().visualize(tmp_path / "g.svg")
    bundle = diagram._repr_mimebundle_()
    assert list(bundle) == ["text/plain"]
    assert bundle["text/plain"].startswith("<Diagram of graph 'corpus'>: cannot draw it")
    assert "conda install -c conda-forge graphviz" in bundle["text/plain"]
    assert "digraph" not in bundle["text/plain"]


def test_save_rejects_an_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"use \.svg, \.png, \.pdf .* got '\.txt'"):
        nested().visualize().save(tmp_path / "g.txt")


@needs_dot
def test_png_is_a_real_png(tmp_path):
    nested().visualize(tmp_path / "g.png", show_types=True)
    data = (tmp_path / "g.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 200 < width < 5000 and 100 < height < 5000
    assert len(data) > 5000


@needs_dot
def test_pdf_by_extension(tmp_path):
    data = nested().visualize().save(tmp_path / "g.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 1000


@needs_dot
def test_jupyter_gets_svg_with_clusters_and_two_line_labels():
    bundle = nested().visualize()._repr_mimebundle_()
    assert bundle["text/plain"] == "<Diagram of graph 'corpus'>"
    svg = ET.fromstring(bundle["image/svg+xml"])
    ns = {"s": "http://www.w3.org/2000/svg"}
    clusters = {
        g.findtext("s:title", namespaces=ns): [t.text for t in g.iterfind("s:text", ns)]
        for g in svg.iterfind(".//s:g[@class='cluster']", ns)
    }
    assert clusters == {
        "cluster_per_text": ["per_text", "map over texts"],
        "cluster_per_text/inner": ["inner"],
    }
    nodes = {
        g.findtext("s:title", namespaces=ns): [t.text for t in g.iterfind("s:text", ns)]
        for g in svg.iterfind(".//s:g[@class='node']", ns)
    }
    assert nodes["node/per_text/inner/clean"] == ["clean", "→ cleaned"]
    assert nodes["input/texts"] == ["texts"]
    assert nodes["output/total"] == ["total"]


def test_importing_the_package_does_not_import_graphviz():
    code = "import sys, hypernodes_chain; assert 'graphviz' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_nodes_docstring_is_its_hover_text_in_the_diagram() -> None:
    from hypernodes_chain import Graph, node

    @node
    def tidy(text: str) -> str:
        """Lower case, spaces collapsed.

        More words that stay out of the tooltip."""
        return " ".join(text.lower().split())

    source = Graph([tidy]).visualize().source
    assert 'tooltip="Lower case, spaces collapsed."' in source
