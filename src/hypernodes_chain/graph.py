"""`Graph`: nodes wired by name, validated once, then immutable.

A graph is pure structure: it knows its nodes, inputs and outputs and can be nested
into another graph with `as_node`, but it never executes anything.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from . import _types
from .exceptions import CycleError, DuplicateOutputError, GraphTypeError, UnknownInputError
from .node import Node, node

__all__ = ["Graph", "GraphNode"]


class Graph:
    """Nodes whose edges come from parameter names matching output names.

    Parameters
    ----------
    nodes
        `Node` objects (plain functions are wrapped with ``@node``); order does not matter.
    name
        Shown in events, progress displays and manifests.

    Raises
    ------
    DuplicateOutputError
        Two nodes produce one output.
    CycleError
        The edges form a cycle (the message prints it).
    GraphTypeError
        A producer's annotated return type cannot feed a consumer's annotated parameter.
    """

    __slots__ = (
        "__weakref__",
        "_bound",
        "_producer",
        "inputs",
        "name",
        "nodes",
        "optional_inputs",
        "outputs",
    )

    name: str
    nodes: tuple[Node[..., Any], ...]
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    _producer: dict[str, Node[..., Any]]
    _bound: Mapping[str, Any]

    def __init__(
        self, nodes: Iterable[Node[..., Any] | Callable[..., Any]], name: str | None = None
    ):
        given = [n if isinstance(n, Node) else node(n) for n in nodes]
        producer: dict[str, Node[..., Any]] = {}
        for n in given:
            for out in n.outputs:
                if out in producer:
                    other = producer[out]
                    msg = (
                        f"output {out!r} is produced by two nodes: {other.name!r} and {n.name!r}; "
                        f"rename one with node.rename(outputs={{{out!r}: 'new_name'}})"
                    )
                    raise DuplicateOutputError(msg)
                producer[out] = n
        ordered = _topological(given, producer)
        _check_types(ordered, producer)
        needed: dict[str, bool] = {}  # root input -> required by at least one node
        for n in ordered:
            for name_ in n.inputs:
                if name_ not in producer:
                    needed[name_] = needed.get(name_, False) or name_ not in n.optional
        s = object.__setattr__
        s(self, "name", name or "graph")
        s(self, "nodes", tuple(ordered))
        s(self, "_producer", producer)
        s(self, "outputs", tuple(o for n in ordered for o in n.outputs))
        s(self, "inputs", tuple(k for k, req in needed.items() if req))
        s(self, "optional_inputs", tuple(k for k, req in needed.items() if not req))
        s(self, "_bound", _NOTHING_BOUND)

    def __setattr__(self, key: str, value: object) -> None:
        msg = f"Graph is immutable; cannot set {key!r} (build a new Graph instead)"
        raise AttributeError(msg)

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt (and validated again) from its nodes, which are in topological order:
        # the stable sort gives that same order back
        if self._bound:
            return (_restore_bound, (type(self), self.nodes, self.name, dict(self._bound)))
        return (type(self), (self.nodes, self.name))

    @property
    def bound(self) -> Mapping[str, Any]:
        """The inputs fixed by `bind`, name -> value (read-only)."""
        return self._bound

    def bind(self, **values: Any) -> Graph:
        """A copy of this graph whose named inputs are fixed to ``values``.

        The names leave `inputs` / `optional_inputs` and are listed in `bound`. Runners
        pass a bound value to every run and every map item as a constant input (never
        mapped over), so it enters cache keys exactly as the same value given as an
        input would; a graph node built with `as_node` does the same inside. Binding a
        bound name again replaces its value. Passing a bound name to a runner is an
        `InputConflictError`: bind it again to change it.

        Raises
        ------
        UnknownInputError
            A name that is not an input of the graph (an output of a node included).
        """
        for name in values:
            self._check_bindable(name)
        new = object.__new__(type(self))
        s = object.__setattr__
        for slot in ("name", "nodes", "_producer", "outputs"):
            s(new, slot, getattr(self, slot))
        s(new, "inputs", tuple(i for i in self.inputs if i not in values))
        s(new, "optional_inputs", tuple(i for i in self.optional_inputs if i not in values))
        s(new, "_bound", MappingProxyType({**self._bound, **values}))
        return new

    def _check_bindable(self, name: str) -> None:
        known = self.inputs + self.optional_inputs + tuple(self._bound)
        if name in known:
            return
        producer = self._producer.get(name)
        if producer is not None:
            what = f"it is an output of node {producer.name!r} in graph {self.name!r}, not an input"
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = f"graph {self.name!r} has no input of that name{hint}"
        msg = f"cannot bind {name!r}: {what}; its inputs are {list(known)}"
        raise UnknownInputError(msg)

    @staticmethod
    def from_modules(*modules: Any, config: Mapping[str, Any] | None = None) -> Graph:
        """The graph of an Apache Hamilton dataflow: `hypernodes_chain.hamilton.from_modules`."""
        from . import hamilton  # late import: optional interop, above this layer

        return hamilton.from_modules(*modules, config=config)

    def walk(self) -> Iterator[Node[..., Any]]:
        """Every node, nested graphs' nodes included, depth first.

        The order is fixed: this graph's `nodes` in their (topological) order, each
        `GraphNode` followed at once by its own graph's walk, before the next node. Equal
        graphs, such as a graph and its unpickled copy, walk in step.
        """
        for n in self.nodes:
            yield n
            if isinstance(n, GraphNode):
                yield from n.graph.walk()

    def producer_of(self, output: str) -> Node[..., Any] | None:
        """The node that produces ``output`` (None for a root input)."""
        return self._producer.get(output)

    def as_node(
        self,
        name: str | None = None,
        *,
        map_over: str | Sequence[str] | None = None,
        input_mapping: Mapping[str, str] | None = None,
        output_mapping: Mapping[str, str] | None = None,
    ) -> GraphNode:
        """This graph as one node of another graph.

        Parameters
        ----------
        name
            The node's name (default: the graph's name).
        map_over
            Outer input names whose values are lists: the inner graph runs once per
            element and every output becomes a list in input order.
        input_mapping
            ``{outer_name: inner_name}`` for inputs whose names differ.
        output_mapping
            ``{inner_name: outer_name}``; when given, only these outputs are exposed.
        """
        return GraphNode(
            self,
            name=name,
            map_over=map_over,
            input_mapping=input_mapping,
            output_mapping=output_mapping,
        )

    def visualize(self, filename: str | Path | None = None, *, show_types: bool = False) -> Any:
        """A `viz.Diagram` of the graph (SVG in Jupyter; see `viz.visualize`).

        ``filename`` also saves it (``.svg``, ``.png``, ``.pdf`` or ``.dot``); ``show_types``
        puts the annotated types on the edges.
        """
        from . import viz  # late import: viz is a front end over this layer, not part of it

        return viz.visualize(self, filename=filename, show_types=show_types)

    def __rich__(self) -> Any:
        """``rich.print(graph)`` shows `viz.rich_tree`."""
        from . import viz

        return viz.rich_tree(self)

    def __repr__(self) -> str:
        bound = f", bound={list(self._bound)}" if self._bound else ""
        return (
            f"<Graph {self.name!r}: {len(self.nodes)} nodes, inputs={list(self.inputs)}{bound}, "
            f"outputs={list(self.outputs)}>"
        )


_NOTHING_BOUND: Mapping[str, Any] = MappingProxyType({})


def _restore_bound(
    cls: type[Graph], nodes: tuple[Node[..., Any], ...], name: str, bound: dict[str, Any]
) -> Graph:
    return cls(nodes, name).bind(**bound)


class GraphNode(Node[..., Any]):
    """A graph used as one node of an outer graph (built by `Graph.as_node`)."""

    def __init__(
        self,
        graph: Graph,
        *,
        name: str | None = None,
        map_over: str | Sequence[str] | None = None,
        input_mapping: Mapping[str, str] | None = None,
        output_mapping: Mapping[str, str] | None = None,
    ) -> None:
        self.graph = graph
        self.func = self._not_callable
        self.name = name or graph.name
        self.kind = "graph"
        self.cache = True
        self.batch = False
        inner_inputs = graph.inputs + graph.optional_inputs
        to_outer = {inner: outer for outer, inner in (input_mapping or {}).items()}
        unknown = sorted(set(to_outer) - set(inner_inputs))
        if unknown:
            msg = (
                f"graph node {self.name!r}: input_mapping names inner inputs {unknown} that "
                f"graph {graph.name!r} does not have; its inputs are {list(inner_inputs)}"
            )
            raise ValueError(msg)
        out_map = dict(output_mapping) if output_mapping else {o: o for o in graph.outputs}
        unknown = sorted(set(out_map) - set(graph.outputs))
        if unknown:
            msg = (
                f"graph node {self.name!r}: output_mapping names outputs {unknown} that "
                f"graph {graph.name!r} does not produce; its outputs are {list(graph.outputs)}"
            )
            raise ValueError(msg)
        self.output_map: dict[str, str] = out_map  # inner -> outer
        self.outputs = tuple(out_map.values())
        self.output_name = self.outputs if len(self.outputs) != 1 else self.outputs[0]
        self.parameters = inner_inputs
        self.defaults = {p: None for p in graph.optional_inputs}
        self.keyword_only = frozenset()
        self.input_map = {p: to_outer.get(p, p) for p in inner_inputs}
        over = (map_over,) if isinstance(map_over, str) else tuple(map_over or ())
        outer_inputs = set(self.input_map.values())
        bad = [m for m in over if m not in outer_inputs]
        if bad:
            msg = (
                f"graph node {self.name!r}: map_over names {bad}, which are not inputs of "
                f"the node; its inputs are {sorted(outer_inputs)}"
            )
            raise ValueError(msg)
        self.map_over: tuple[str, ...] = over

    @property
    def hints(self) -> dict[str, Any]:
        return {}

    def fingerprint_parts(self) -> list[tuple[str, Any]]:
        """A nested graph changes when its wiring, any inner node or a bound value changes."""
        wiring = ("graph", self.outputs, self.map_over, sorted(self.input_map.items()))
        parts = [("value", wiring), *(("node", inner) for inner in self.graph.nodes)]
        if self.graph.bound:  # an unbound graph keeps the fingerprint it always had
            parts.append(("value", ("bound", dict(self.graph.bound))))
        return parts

    def output_type(self, output: str) -> Any:
        if self.map_over:
            return list
        inner = next(i for i, o in self.output_map.items() if o == output)
        producer = self.graph.producer_of(inner)
        return producer.output_type(inner) if producer else Any

    def input_type(self, input_name: str) -> Any:
        if input_name in self.map_over:
            return Any
        inner = next(i for i, o in self.input_map.items() if o == input_name)
        types_ = [n.input_type(inner) for n in self.graph.nodes if inner in n.inputs]
        return types_[0] if len(types_) == 1 else Any

    def __reduce__(self) -> tuple[Any, ...]:
        state = (self.name, self.map_over, self.input_map, self.output_map, self.outputs)
        return (_restore_graph_node, (type(self), self.graph, *state))

    def _not_callable(self, *args: Any, **kwargs: Any) -> Any:
        msg = f"graph node {self.name!r} is not callable; run its graph with a runner"
        raise TypeError(msg)

    __call__ = _not_callable

    def __repr__(self) -> str:
        over = f", map_over={list(self.map_over)}" if self.map_over else ""
        return (
            f"<GraphNode {self.name}({', '.join(self.inputs)}) -> {', '.join(self.outputs)}{over}>"
        )


def _restore_graph_node(
    cls: type[GraphNode],
    graph: Graph,
    name: str,
    map_over: tuple[str, ...],
    input_map: dict[str, str],
    output_map: dict[str, str],
    outputs: tuple[str, ...],
) -> GraphNode:
    outer_inputs = list(input_map.values())
    if (
        len(set(outer_inputs)) == len(outer_inputs)
        and set(map_over) <= set(outer_inputs)
        and tuple(output_map.values()) == outputs
    ):
        # what `as_node` builds: its arguments can be read back from the mappings
        return cls(
            graph,
            name=name,
            map_over=map_over,
            input_mapping={outer: inner for inner, outer in input_map.items() if outer != inner},
            output_mapping=output_map,
        )
    # a `rename`d copy: rename a fresh node the same way (rename leaves map_over as it was)
    base = cls(graph, name=name, output_mapping=output_map)
    new = cast(
        GraphNode,
        base.rename(
            inputs={inner: outer for inner, outer in input_map.items() if outer != inner},
            outputs=dict(zip(base.outputs, outputs)),
        ),
    )
    new.map_over = map_over
    return new


def _topological(
    nodes: list[Node[..., Any]], producer: Mapping[str, Node[..., Any]]
) -> list[Node[..., Any]]:
    """Kahn's algorithm, stable in the given order; a cycle is reported as a path."""
    deps = {id(n): {id(producer[i]) for i in n.inputs if i in producer} for n in nodes}
    by_id = {id(n): n for n in nodes}
    done: set[int] = set()
    ordered: list[Node[..., Any]] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if deps[id(n)] <= done]
        if not ready:
            raise CycleError(_cycle_message(pending, deps, by_id))
        for n in ready:
            done.add(id(n))
            ordered.append(n)
        pending = [n for n in pending if id(n) not in done]
    return ordered


def _cycle_message(
    pending: list[Node[..., Any]], deps: Mapping[int, set[int]], by_id: Mapping[int, Node[..., Any]]
) -> str:
    start = pending[0]
    seen: list[int] = []
    current = id(start)
    while current not in seen:
        seen.append(current)
        current = next(d for d in sorted(deps[current]) if d in {id(n) for n in pending})
    cycle = [*seen[seen.index(current) :], current]
    # deps point from consumer to producer: reverse to read in data-flow order
    names = [by_id[i].name for i in reversed(cycle)]
    return "the graph has a cycle: " + " -> ".join(names)


def _check_types(ordered: list[Node[..., Any]], producer: Mapping[str, Node[..., Any]]) -> None:
    for consumer in ordered:
        for inp in consumer.inputs:
            prod = producer.get(inp)
            if prod is None:
                continue
            made = prod.output_type(inp)
            wanted = consumer.input_type(inp)
            if prod.batch:
                made = _types.element_type(made)
            if consumer.batch:
                wanted = _types.element_type(wanted)
            if not _types.compatible(made, wanted):
                msg = (
                    f"type clash on {inp!r}: node {prod.name!r} returns "
                    f"{_types.type_name(made)} but node {consumer.name!r} expects "
                    f"{_types.type_name(wanted)} for parameter {inp!r}"
                )
                raise GraphTypeError(msg)
