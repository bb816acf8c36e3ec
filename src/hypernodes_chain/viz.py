"""Pictures of a graph: a rich tree for terminals, a graphviz diagram for notebooks and files.

Nothing here executes a graph. The diagram is built with the ``graphviz`` package (the
``viz`` extra), imported only when a diagram is asked for; turning it into SVG, PNG or PDF
runs Graphviz's ``dot`` program, which is a system package, not a Python one.

In the diagram graph inputs are blue ellipses (dashed when optional), inputs fixed by
`Graph.bind` grey ones labelled with their value, nodes are boxes with
their name over their outputs, final outputs (produced and read by no node) are green
double ellipses, and a nested graph is a cluster around its own nodes, orange and labelled
"map over ..." when it is mapped. Edges into a nested graph go straight to the inner nodes
that read the value.
"""

from __future__ import annotations

import html
import reprlib
import urllib.parse
from pathlib import Path
from types import GenericAlias
from typing import Any, NamedTuple

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from . import _types
from ._optional import optional
from .exceptions import DotNotFoundError
from .graph import Graph, GraphNode
from .node import Node

__all__ = ["Diagram", "DotNotFoundError", "print_tree", "rich_tree", "to_dot", "visualize"]

INSTALL_DOT = (
    "install Graphviz, which provides it: `apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS), `conda install -c conda-forge graphviz`, or see "
    "https://graphviz.org/download/"
)


# -- rich tree ----------------------------------------------------------------


def _flags(node: Node[..., Any]) -> list[str]:
    flags = []
    if node.batch:
        flags.append("batch")
    if node.kind in ("async", "gen", "agen"):
        flags.append({"async": "async", "gen": "stream", "agen": "async stream"}[node.kind])
    if not node.cache:
        flags.append("no cache")
    return flags


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _node_label(node: Node[..., Any]) -> Text:
    text = Text()
    text.append(node.name, style="bold cyan")
    text.append("(" + ", ".join(node.inputs) + ")", style="dim")
    text.append(" → ")
    text.append(", ".join(node.outputs), style="green")
    flags = _flags(node)
    if isinstance(node, GraphNode):
        over = f", map over {', '.join(node.map_over)}" if node.map_over else ""
        bound = f", bound {', '.join(node.graph.bound)}" if node.graph.bound else ""
        flags.insert(0, "graph" + over + bound)
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
    if graph.bound:
        inputs.append("  bound: ", style="dim")
        inputs.append(", ".join(_bound_labels(graph)), style="magenta")
    tree.add(inputs)
    _add_nodes(tree, graph)
    return tree


def _bound_labels(graph: Graph) -> list[str]:
    """``name=value`` per bound input, the value's repr shortened (`reprlib`)."""
    return [f"{name}={reprlib.repr(value)}" for name, value in graph.bound.items()]


def print_tree(graph: Graph, *, console: Console | None = None) -> None:
    """Print `rich_tree` of ``graph`` (to ``console``, default rich's own)."""
    (console or Console()).print(rich_tree(graph))


# -- graphviz diagram ---------------------------------------------------------


def _graphviz() -> Any:
    hint = (
        "pip install 'hypernodes-chain[viz]', or pip install -e \".[viz]\" in a clone of the "
        f"repository (and Graphviz's `dot` to render: {INSTALL_DOT})"
    )
    return optional("graphviz", "drawing a graph", install=hint)


def _id(*parts: str) -> str:
    # DOT ids are never shown; percent-encoding keeps "/" free as a separator and ":" (a port
    # in edge statements) out of them, whatever the names hold
    return "/".join(urllib.parse.quote(p, safe="") for p in parts)


def _box_label(node: Node[..., Any]) -> str:
    lines = [f"<b>{html.escape(node.name)}</b>"]
    lines.append(f'<font point-size="10">→ {html.escape(", ".join(node.outputs))}</font>')
    flags = _flags(node)
    if flags:
        lines.append(f'<font point-size="9" color="#8a6d00"><i>{"; ".join(flags)}</i></font>')
    return "<" + "<br/>".join(lines) + ">"


class _Source(NamedTuple):
    """Where a value comes from in the diagram: the dot id of its producer (or input), its
    type, and ``renamed`` ("outer → inner") where a nested graph's mapping renames it."""

    id: str
    type: Any
    renamed: str | None = None


class _Drawing:
    """Walks a graph and its nested graphs, adding graphviz statements as it goes."""

    def __init__(self, root: Any, show_types: bool) -> None:
        self.root = root
        self.show_types = show_types

    def edge(self, source: _Source, head: str, wanted: Any = Any) -> None:
        # every edge goes into the root graph: a node named in a cluster's edge statement
        # would join that cluster
        parts = [source.renamed] if source.renamed else []
        if self.show_types:
            tp = source.type if source.type is not Any else wanted
            parts += [] if tp is Any else [_types.type_name(tp)]
        self.root.edge(source.id, head, label=": ".join(parts) or None)

    def body(
        self, dot: Any, graph: Graph, path: tuple[str, ...], sources: dict[str, _Source]
    ) -> dict[str, _Source]:
        """Draw ``graph``'s nodes; ``sources`` maps its inputs to (dot id, type); returns
        the same map with its outputs added."""
        available = dict(sources)
        for name, label in zip(graph.bound, _bound_labels(graph)):
            available[name] = _Source(_id("bound", *path, name), Any)
            dot.node(
                available[name].id,
                label=_graphviz().nohtml(label),
                shape="ellipse",
                style="filled",
                fillcolor="#e5e7eb",
            )
        for node in graph.nodes:
            if isinstance(node, GraphNode):
                available.update(self.cluster(dot, node, path, available))
                continue
            head = _id("node", *path, node.name)
            doc = _first_line(node.__doc__)  # a hover text in SVG
            dot.node(head, label=_box_label(node), **({"tooltip": doc} if doc else {}))
            # a batch node's list annotations hold one item's value per element
            per_item = _types.element_type if node.batch else (lambda tp: tp)
            for inp in node.inputs:
                self.edge(available[inp], head, per_item(node.input_type(inp)))
            for out in node.outputs:
                available[out] = _Source(head, per_item(node.output_type(out)))
        return available

    def cluster(
        self,
        dot: Any,
        node: GraphNode,
        path: tuple[str, ...],
        available: dict[str, _Source],
    ) -> dict[str, _Source]:
        inner_path = (*path, node.name)
        title = f"<b>{html.escape(node.name)}</b>"
        attrs = {"style": "rounded,filled", "color": "#9ca3af", "fillcolor": "#f5f5f5"}
        if node.map_over:
            title += f"<br/>map over {html.escape(', '.join(node.map_over))}"
            attrs = {"style": "rounded,filled,bold", "color": "#d97706", "fillcolor": "#fff7e6"}
        with dot.subgraph(name="cluster_" + _id(*inner_path)) as sub:
            sub.attr(label=f"<{title}>", **attrs)
            inner = {i: _renamed(available[o], o, i) for i, o in node.input_map.items()}
            made = self.body(sub, node.graph, inner_path, inner)
        outputs = {}
        for inner_name, outer_name in node.output_map.items():
            head, tp, _ = made[inner_name]
            if node.map_over and tp is not Any:
                tp = GenericAlias(list, (tp,))  # a mapped graph gives one list per output
            outputs[outer_name] = _renamed(_Source(head, tp), inner_name, outer_name)
        return outputs


def _renamed(source: _Source, before: str, after: str) -> _Source:
    """``source`` labelled with a nested graph's renaming of it (none where the name stays)."""
    if before == after:
        return source
    return source._replace(renamed=f"{before} → {after}")


def _digraph(graph: Graph, *, show_types: bool = False) -> Any:
    gv = _graphviz()
    font = {"fontname": "Helvetica", "fontsize": "12"}
    dot = gv.Digraph(
        name=graph.name,
        graph_attr={"rankdir": "LR", "label": gv.nohtml(graph.name), "labelloc": "t", **font},
        node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "white", **font},
        edge_attr={"fontname": "Helvetica", "fontsize": "10", "color": "#4b5563"},
    )
    sources: dict[str, _Source] = {}
    for name in graph.inputs + graph.optional_inputs:
        optional = name in graph.optional_inputs
        sources[name] = _Source(_id("input", name), Any)
        dot.node(
            sources[name].id,
            label=gv.nohtml(name),
            shape="ellipse",
            style="filled,dashed" if optional else "filled",
            fillcolor="#dbeafe",
        )
    drawing = _Drawing(dot, show_types)
    made = drawing.body(dot, graph, (), sources)
    read = {i for n in graph.nodes for i in n.inputs}
    for out in (o for o in graph.outputs if o not in read):
        head = _id("output", out)
        dot.node(head, label=gv.nohtml(out), shape="ellipse", peripheries="2", fillcolor="#dcfce7")
        drawing.edge(made[out], head)
    return dot


def to_dot(graph: Graph, *, show_types: bool = False) -> str:
    """Graphviz DOT source of the diagram that `visualize` draws."""
    return str(_digraph(graph, show_types=show_types).source)


class Diagram:
    """A graph's graphviz diagram: SVG in Jupyter, a file by extension with `save`.

    ``digraph`` is the underlying ``graphviz.Digraph``, open to further styling.
    """

    def __init__(self, digraph: Any) -> None:
        self.digraph = digraph

    @property
    def source(self) -> str:
        """The DOT source."""
        return str(self.digraph.source)

    def pipe(self, format: str) -> bytes:
        """Render with ``dot`` into ``format`` (``"svg"``, ``"png"``, ``"pdf"``, ...).

        Raises
        ------
        DotNotFoundError
            Graphviz's ``dot`` program is not on PATH.
        """
        gv = _graphviz()
        try:
            return bytes(self.digraph.pipe(format=format))
        except gv.ExecutableNotFound as exc:
            msg = f"rendering a diagram needs Graphviz's `dot` program on PATH; {INSTALL_DOT}"
            raise DotNotFoundError(msg) from exc

    def svg(self) -> str:
        """The diagram as SVG text (needs ``dot``)."""
        return self.pipe("svg").decode("utf-8")

    def save(self, filename: str | Path) -> Path:
        """Write the diagram in the format its extension names.

        ``.svg``, ``.png``, ``.pdf`` (or any other Graphviz output format) are rendered with
        ``dot``; ``.dot`` and ``.gv`` get the DOT source and need no ``dot``.

        Raises
        ------
        ValueError
            The extension names no Graphviz format.
        DotNotFoundError
            Rendering needs ``dot`` and it is not on PATH.
        """
        path = Path(filename)
        fmt = path.suffix[1:].lower()
        if fmt in ("dot", "gv"):
            path.write_text(self.source)
            return path
        if fmt not in _graphviz().FORMATS:
            msg = (
                f"cannot tell the format of {str(path)!r} from its extension; use .svg, .png, "
                f".pdf (rendered with dot) or .dot for the source, got {path.suffix or 'none'!r}"
            )
            raise ValueError(msg)
        path.write_bytes(self.pipe(fmt))
        return path

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        try:
            return {"image/svg+xml": self.svg(), "text/plain": repr(self)}
        except DotNotFoundError:
            # a notebook shows this line, not a screenful of DOT source
            msg = f"{self!r}: cannot draw it, Graphviz's `dot` program is not on PATH; "
            return {"text/plain": msg + INSTALL_DOT}

    def __repr__(self) -> str:
        return f"<Diagram of graph {self.digraph.name!r}>"

    def __str__(self) -> str:
        return self.source


def visualize(
    graph: Graph, filename: str | Path | None = None, *, show_types: bool = False
) -> Diagram:
    """A `Diagram` of ``graph`` (SVG in Jupyter).

    Parameters
    ----------
    filename
        When given, also saved there in the format its extension names (see `Diagram.save`).
    show_types
        Put the annotated type of each value on its edges.

    Raises
    ------
    ImportError
        The ``graphviz`` package is missing (the ``viz`` extra).
    DotNotFoundError
        ``filename`` asks for a rendered format and ``dot`` is not on PATH.
    """
    diagram = Diagram(_digraph(graph, show_types=show_types))
    if filename is not None:
        diagram.save(filename)
    return diagram
