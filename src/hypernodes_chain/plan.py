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

from .exceptions import InputConflictError, MissingInputError, UnknownInputError
from .graph import Graph
from .node import Node

__all__ = ["Plan", "Step", "build_plan", "check_overrides", "normalize_outputs", "with_bound"]


@dataclass(frozen=True, slots=True)
class Step:
    """One node of a plan with the value names bound to its parameters."""

    node: Node[..., Any]
    params: tuple[str, ...]  # the function's parameter names that receive a value
    sources: tuple[str, ...]  # the value name each of those parameters reads
    positional: bool  # params are exactly the leading positional parameters
    output: str | None  # the single output's name (None for tuple outputs)
    used: tuple[str, ...]  # the node's outputs that the plan reads or returns, not given
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
    shadowed: Mapping[str, tuple[str, ...]]  # override -> the given inputs it leaves unused
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

    A given input named like a computed value overrides it (`check_overrides` refuses
    one that leaves another given input unused); a given input that no node reads is
    returned as given when it is requested.

    Raises
    ------
    UnknownInputError
        An input that nothing reads nor requests, or a requested output that the graph
        does not have.
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


def with_bound(
    graph: Graph, inputs: Mapping[str, object], map_over: Iterable[str] = ()
) -> Mapping[str, object]:
    """``inputs`` with the values that ``graph`` binds (`Graph.bind`) added.

    A runner plans and runs with the result, so a bound value is given like any
    constant input (the same cache keys); in a map it is never mapped over.

    Raises
    ------
    InputConflictError
        ``inputs`` or ``map_over`` name a bound input.
    """
    bound = graph.bound
    if not bound:
        return inputs
    for name in inputs:
        if name in bound:
            msg = (
                f"graph {graph.name!r} binds {name!r} (graph.bind), so inputs cannot give it "
                f"too; to change its value, bind it again: graph.bind({name}=...)"
            )
            raise InputConflictError(msg)
    for name in map_over:
        if name in bound:
            msg = (
                f"graph {graph.name!r} binds {name!r} (graph.bind), so map_over cannot name it: "
                "a bound value is the same for every item; map over the graph before binding"
            )
            raise InputConflictError(msg)
    return {**bound, **inputs}


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build(graph: Graph, outputs: tuple[str, ...] | None, given: frozenset[str]) -> Plan:
    wanted = graph.outputs if outputs is None else outputs
    _check_names(graph, wanted, given)
    selected, seen = _select(graph, wanted, given)
    available = given | {o for n in graph.nodes if id(n) in selected for o in n.outputs}
    chosen = [n for n in graph.nodes if id(n) in selected]
    read = {n.input_map[p] for n in chosen for p in n.parameters} & available
    used = (read | set(wanted)) - given
    steps = tuple(_step(n, available, used) for n in chosen)
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
        shadowed=_shadowed(graph, given, seen),
    )


def _check_names(graph: Graph, wanted: tuple[str, ...], given: frozenset[str]) -> None:
    """Every given input is read by some node or requested as an output; every requested
    output is produced or given."""
    known_inputs = graph.inputs + graph.optional_inputs + tuple(graph.bound)
    for name in sorted(given):
        if name not in known_inputs and graph.producer_of(name) is None and name not in wanted:
            msg = (
                f"unknown input {name!r} for graph {graph.name!r}"
                f"{_suggest(name, known_inputs + graph.outputs)}; "
                f"its inputs are {list(known_inputs)}"
            )
            raise UnknownInputError(msg)
    for name in wanted:
        if graph.producer_of(name) is None and name not in given:
            msg = (
                f"unknown output {name!r} for graph {graph.name!r}"
                f"{_suggest(name, graph.outputs)}; its outputs are {list(graph.outputs)}"
            )
            raise UnknownInputError(msg)


def _select(
    graph: Graph, wanted: tuple[str, ...], given: frozenset[str]
) -> tuple[set[int], set[str]]:
    """The ids of the nodes that ``wanted`` needs, and every value name reached (a given
    name stops the walk: it overrides its producer)."""
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
    return selected, seen


def _shadowed(graph: Graph, given: frozenset[str], seen: set[str]) -> dict[str, tuple[str, ...]]:
    """Per override (a given input named like a computed value that the plan reads or
    returns): the other given inputs that its producer would have read, directly or
    through other nodes, and that nothing else in the plan reads."""
    overrides = sorted(n for n in given & seen if graph.producer_of(n) is not None)
    out: dict[str, tuple[str, ...]] = {}
    for name in overrides:
        upstream: set[str] = set()
        stack = list(graph.producer_of(name).inputs)  # type: ignore[union-attr]
        while stack:
            inp = stack.pop()
            if inp in upstream:
                continue
            upstream.add(inp)
            producer = graph.producer_of(inp)
            if producer is not None:
                stack.extend(producer.inputs)
        lost = sorted((upstream & given) - seen)
        if lost:
            out[name] = tuple(lost)
    return out


def check_overrides(plan: Plan) -> None:
    """Refuse a request whose override leaves another given input unused.

    An input named like a computed value replaces that value; when the node it replaces
    was the only reader of another given input, the request says two things at once.

    Raises
    ------
    InputConflictError
        Naming the override, the node it replaces and the inputs left unused.
    """
    if not plan.shadowed:
        return
    parts = []
    for name, lost in plan.shadowed.items():
        producer = plan.graph.producer_of(name)
        assert producer is not None  # an override replaces a produced value
        what = f"node {name!r}"
        if producer.name != name:
            what = f"the output {name!r} of node {producer.name!r}"
        unused = (
            f"input {lost[0]!r} is"
            if len(lost) == 1
            else f"inputs {', '.join(repr(n) for n in lost)} are"
        )
        parts.append(f"input {name!r} replaces {what}, so {unused} not used")
    msg = f"graph {plan.graph.name!r}: " + "; ".join(parts) + ": pass one of them"
    raise InputConflictError(msg)


def _step(node: Node[..., Any], available: frozenset[str] | set[str], used: set[str]) -> Step:
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
        used=tuple(o for o in node.outputs if o in used),
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
