"""Pictures of a graph: a rich tree for terminals, a graphviz diagram for notebooks.

Nothing here executes a graph. The DOT source is written by hand, so no graphviz
package is needed to get it; rendering it to SVG uses the ``dot`` program when present.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from rich.text import Text
from rich.tree import Tree

from .graph import Graph, GraphNode
from .node import Node

__all__ = ["Diagram", "rich_tree", "to_dot", "visualize"]


def _node_label(node: Node[..., Any]) -> Text:
    text = Text()
    text.append(node.name, style="bold cyan")
    text.append("(" + ", ".join(node.inputs) + ")", style="dim")
    text.append(" → ")
    text.append(", ".join(node.outputs), style="green")
    flags = []
    if isinstance(node, GraphNode):
        flags.append("graph" + (f", map over {', '.join(node.map_over)}" if node.map_over else ""))
    if node.batch:
        flags.append("batch")
    if node.kind in ("async", "gen", "agen"):
        flags.append({"async": "async", "gen": "stream", "agen": "async stream"}[node.kind])
    if not node.cache:
        flags.append("no cache")
    if flags:
        text.append("  [" + "; ".join(flags) + "]", style="yellow")
    return text


def _add_nodes(tree: Tree, graph: Graph) -> None:
    for node in graph.nodes:
        branch = tree.add(_node_label(node))
        if isinstance(node, GraphNode):
            _add_nodes(branch, node.graph)


def rich_tree(graph: Graph) -> Tree:
    """The graph as a rich `Tree`: inputs, then each node, nested graphs folded under theirs."""
    tree = Tree(Text(graph.name, style="bold"))
    inputs = Text("inputs: ", style="dim")
    inputs.append(", ".join(graph.inputs) or "-", style="magenta")
    if graph.optional_inputs:
        inputs.append("  optional: ", style="dim")
        inputs.append(", ".join(graph.optional_inputs), style="magenta")
    tree.add(inputs)
    _add_nodes(tree, graph)
    return tree


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_body(graph: Graph, prefix: str, lines: list[str]) -> None:
    producer = {o: n for n in graph.nodes for o in n.outputs}
    for name in graph.inputs + graph.optional_inputs:
        style = "dashed" if name in graph.optional_inputs else "solid"
        lines.append(
            f"  {_quote(prefix + name)} [shape=ellipse, style={style}, label={_quote(name)}];"
        )
    for node in graph.nodes:
        label = f"{node.name}\\n→ {', '.join(node.outputs)}"
        shape = "box3d" if isinstance(node, GraphNode) else "box"
        lines.append(f"  {_quote(prefix + node.name)} [shape={shape}, label={_quote(label)}];")
        for inp in node.inputs:
            source = producer[inp].name if inp in producer else inp
            lines.append(f"  {_quote(prefix + source)} -> {_quote(prefix + node.name)};")


def to_dot(graph: Graph) -> str:
    """Graphviz DOT source for the graph (inputs as ellipses, nodes as boxes)."""
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    _dot_body(graph, "", lines)
    lines.append("}")
    return "\n".join(lines)


class Diagram:
    """DOT source that renders itself as SVG in Jupyter when graphviz's ``dot`` is installed."""

    def __init__(self, source: str) -> None:
        self.source = source

    def svg(self) -> str | None:
        dot = shutil.which("dot")
        if dot is None:
            return None
        done = subprocess.run(
            [dot, "-Tsvg"], input=self.source, capture_output=True, text=True, check=False
        )
        return done.stdout if done.returncode == 0 else None

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        bundle = {"text/plain": self.source}
        svg = self.svg()
        if svg is not None:
            bundle["image/svg+xml"] = svg
        return bundle

    def save(self, filename: str | Path) -> Path:
        """Write ``.svg`` (rendered; needs ``dot``) or any other suffix as DOT source."""
        path = Path(filename)
        if path.suffix == ".svg":
            svg = self.svg()
            if svg is None:
                msg = "rendering SVG needs graphviz's `dot` program; save as .dot instead"
                raise RuntimeError(msg)
            path.write_text(svg)
        else:
            path.write_text(self.source)
        return path

    def __str__(self) -> str:
        return self.source


def visualize(graph: Graph, filename: str | Path | None = None) -> Diagram:
    """A `Diagram` of ``graph``; with ``filename`` it is also saved there."""
    diagram = Diagram(to_dot(graph))
    if filename is not None:
        diagram.save(filename)
    return diagram
