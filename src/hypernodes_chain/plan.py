"""Planning: which nodes to run, in which order, for the requested outputs.

Pure and memoised: the same (graph, outputs, given input names) gives the same `Plan`
object, so a runner pays for planning once however many times it runs a graph.
"""

from __future__ import annotations

import difflib
import operator
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import MissingInputError, UnknownInputError
from .graph import Graph
from .node import Node

__all__ = ["Plan", "Step", "build_plan", "normalize_outputs"]


@dataclass(frozen=True, slots=True)
class Step:
    """One node of a plan with the value names bound to its parameters."""

    node: Node[..., Any]
    params: tuple[str, ...]  # the function's parameter names that receive a value
    sources: tuple[str, ...]  # the value name each of those parameters reads
    positional: bool  # params are exactly the leading positional parameters
    output: str | None  # the single output's name (None for tuple outputs)
    plain: bool  # a plain sync function called positionally: the runners' fast path
    fetch: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # values -> this step's arguments


@dataclass(frozen=True, slots=True)
class Plan:
    """The pruned, ordered steps that produce ``outputs`` from the ``given`` inputs."""

    graph: Graph
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    given: frozenset[str]
    n_deps: tuple[int, ...]  # per step: how many earlier steps it waits for
    dependents: tuple[tuple[int, ...], ...]  # per step: the steps that wait for it
    simple: bool  # every step is a plain function with one output (inline-able)
    readers: Mapping[str, int]  # value name -> how many steps read it (its last use)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Scratch space of the execution layer (its choices per step), kept with the plan."""


_MEMO: weakref.WeakKeyDictionary[Graph, dict[Any, Plan]] = weakref.WeakKeyDictionary()


def normalize_outputs(output_name: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if output_name is None:
        return None
    if isinstance(output_name, str):
        return (output_name,)
    return tuple(output_name)


def build_plan(graph: Graph, output_name: str | Iterable[str] | None, given: Iterable[str]) -> Plan:
    """The plan for ``output_name`` (every output when None) from inputs named ``given``.

    Raises
    ------
    UnknownInputError
        An input or requested output that the graph does not have.
    MissingInputError
        A required input that is not given, naming the nodes that need it.
    """
    outputs = normalize_outputs(output_name)
    given_set = frozenset(given)
    key = (outputs, given_set)
    memo = _MEMO.setdefault(graph, {})
    plan = memo.get(key)
    if plan is None:
        plan = memo[key] = _build(graph, outputs, given_set)
    return plan


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build(graph: Graph, outputs: tuple[str, ...] | None, given: frozenset[str]) -> Plan:
    known_inputs = graph.inputs + graph.optional_inputs
    for name in sorted(given):
        if name not in known_inputs and graph.producer_of(name) is None:
            msg = (
                f"unknown input {name!r} for graph {graph.name!r}"
                f"{_suggest(name, known_inputs + graph.outputs)}; "
                f"its inputs are {list(known_inputs)}"
            )
            raise UnknownInputError(msg)
    wanted = graph.outputs if outputs is None else outputs
    for name in wanted:
        if graph.producer_of(name) is None and name not in given:
            msg = (
                f"unknown output {name!r} for graph {graph.name!r}"
                f"{_suggest(name, graph.outputs)}; its outputs are {list(graph.outputs)}"
            )
            raise UnknownInputError(msg)

    selected: set[int] = set()
    missing: dict[str, list[str]] = {}
    stack = list(wanted)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in given:
            continue
        producer = graph.producer_of(name)
        if producer is None:
            continue
        if id(producer) not in selected:
            selected.add(id(producer))
            for inp in producer.inputs:
                if inp in given or graph.producer_of(inp) is not None:
                    stack.append(inp)
                elif inp not in producer.optional:
                    missing.setdefault(inp, []).append(producer.name)
    if missing:
        parts = [
            f"{name!r} (needed by {', '.join(repr(n) for n in needers)})"
            for name, needers in sorted(missing.items())
        ]
        msg = f"missing input{'s' if len(parts) > 1 else ''} for graph {graph.name!r}: " + (
            ", ".join(parts)
        )
        raise MissingInputError(msg)
    available = given | {o for n in graph.nodes if id(n) in selected for o in n.outputs}
    steps = tuple(_step(n, available) for n in graph.nodes if id(n) in selected)
    made_by = {o: i for i, st in enumerate(steps) for o in st.node.outputs}
    waits = [{made_by[s] for s in st.sources if s in made_by and s not in given} for st in steps]
    dependents = tuple(tuple(j for j, w in enumerate(waits) if i in w) for i in range(len(steps)))
    return Plan(
        graph=graph,
        steps=steps,
        outputs=tuple(wanted),
        given=given,
        n_deps=tuple(len(w) for w in waits),
        dependents=dependents,
        simple=all(st.plain and st.output is not None for st in steps),
        readers=dict(Counter(s for st in steps for s in st.sources)),
    )


def _step(node: Node[..., Any], available: frozenset[str] | set[str]) -> Step:
    params: list[str] = []
    sources: list[str] = []
    for param in node.parameters:
        source = node.input_map[param]
        if source in available:
            params.append(param)
            sources.append(source)
    positional = (
        tuple(params) == node.parameters[: len(params)]
        and not (set(params) & node.keyword_only)
        and node.kind != "graph"
    )
    return Step(
        node=node,
        params=tuple(params),
        sources=tuple(sources),
        positional=positional,
        output=node.outputs[0] if len(node.outputs) == 1 and node.kind != "graph" else None,
        plain=positional and node.kind == "sync" and not node.batch and node.direct,
        fetch=_fetcher(tuple(sources)),
    )


def _fetcher(sources: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A fast ``values -> tuple of arguments`` (itemgetter avoids a Python-level loop)."""
    if len(sources) >= 2:
        return operator.itemgetter(*sources)
    if len(sources) == 1:
        (only,) = sources
        return lambda values: (values[only],)
    return lambda values: ()
