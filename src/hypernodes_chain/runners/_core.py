"""The shared execution core: every decision about running a plan lives here.

The core is written as generators ("flows"), the way httpx writes its auth flow: a
flow *yields* the calls that are ready to run (a list of `Call` or `ColumnCall`) and
*receives* back the ones that have finished, in any order and any number at a time.
The flow decides everything else: cache look-ups and writes, cache keys, events,
unpacking outputs, error records. Runners only drive a flow:

- `Runner` runs every yielded call inline (or in a thread pool) and sends them all back;
- `AsyncRunner` starts a task per call and sends back whichever finish first, so
  independent nodes overlap;
- `DaskRunner` ships whole batches to workers, which drive `batch_flow` locally.

`item_flow` runs a plan for one item; `batch_flow` runs it over a batch column by
column (a batch node gets the whole column once; nodes that read only constants run
once per batch). Both return ``(values, keys)``: the produced values and their cache
provenance keys.

Cache keys chain: the key of a node's result is ``combine(node fingerprint, keys of
its inputs)``, where a root input's key is the content hash of its value. So editing a
node's code invalidates it and everything downstream, and a key never depends on
which runner computed it or whether it ran under ``run`` or ``map``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import hashing
from ..cache import MISS, Cache
from ..events import (
    EventBus,
    GraphFinished,
    GraphStarted,
    NodeFailed,
    NodeFinished,
    NodeStarted,
)
from ..exceptions import InterruptError, NodeError
from ..graph import GraphNode
from ..node import Node
from ..plan import Plan, Step, build_plan
from ._calls import Call

__all__ = ["Context", "batch_flow", "item_flow", "node_fingerprint"]

Flow = Generator[Any, Any, Any]
_perf = time.perf_counter


@dataclass
class Context:
    """What a runner lends to the core for one run or map."""

    cache: Cache | None = None
    bus: EventBus = field(default_factory=EventBus)
    engines: Any = None
    handlers: Mapping[str, Any] | None = None
    on_error: str = "raise"
    inline: bool = False  # the runner lets the core call plain functions itself (sync only)
    session: Any = None  # an AsyncRunner.iter session that can answer interrupts
    loop: Any = None  # the event loop of an AsyncRunner (async handlers from threads)

    @property
    def interactive(self) -> Context | None:
        """This context when a node's interrupt can be answered, else None (fast path)."""
        return self if self.handlers is not None or self.session is not None else None


_NODE_FP: weakref.WeakKeyDictionary[Node[..., Any], str | None] = weakref.WeakKeyDictionary()
_UNKNOWN = object()


def node_fingerprint(node: Node[..., Any]) -> str | None:
    """Identity of a node's computation: its code, closure values and defaults.

    None when some part cannot be fingerprinted; such a node is never cached.
    """
    known = _NODE_FP.get(node, _UNKNOWN)
    if known is not _UNKNOWN:
        return known  # type: ignore[return-value]
    if isinstance(node, GraphNode):
        # a nested graph changes when any inner node's code changes
        parts = [
            hashing.fingerprint(
                ("graph", node.outputs, node.map_over, sorted(node.input_map.items()))
            ),
            *[node_fingerprint(inner) for inner in node.graph.nodes],
        ]
    else:
        func = node.func
        parts = [hashing.code_fingerprint(func), hashing.fingerprint(node.outputs)]
        cells = getattr(func, "__closure__", None) or ()
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # empty cell
                continue
            if not callable(value):
                parts.append(hashing.fingerprint(value))
            else:
                parts.append(hashing.code_fingerprint(value))
        parts.append(hashing.fingerprint(sorted(node.defaults.items())))
    # a part that cannot be fingerprinted (a closure over a lock, say) makes the
    # node uncacheable: guessing would risk two different nodes sharing keys
    fp = None if None in parts else hashing.combine(*parts)  # type: ignore[arg-type]
    _NODE_FP[node] = fp
    return fp


def chain_key(fp: str | None, source_keys: Sequence[str | None]) -> str | None:
    """A node's cache key: its fingerprint chained with the keys of its inputs."""
    if fp is None or None in source_keys:
        return None
    return hashing.combine(fp, *source_keys)  # type: ignore[arg-type]


def output_key(step: Step, key: str | None, name: str, value: Any) -> str | None:
    """The provenance key of one output value.

    An uncached node's outputs are keyed by their content, so that its consumers can
    still be cached when the value is the same; otherwise the node's key (itself for a
    single output).
    """
    if key is None and not step.node.cache:
        return hashing.fingerprint(value)
    if key is None or len(step.node.outputs) == 1:
        return key
    return hashing.combine(key, name)


def _unpack(step: Step, result: Any) -> tuple[Any, ...]:
    outputs = step.node.outputs
    if len(outputs) == 1:
        return (result,)
    if not isinstance(result, (tuple, list)) or len(result) != len(outputs):
        got = f"{type(result).__name__}" + (
            f" of length {len(result)}" if hasattr(result, "__len__") else ""
        )
        msg = (
            f"node {step.node.name!r} declares {len(outputs)} outputs {outputs} but returned {got}"
        )
        raise TypeError(msg)
    return tuple(result)


def node_error(
    step: Step, error: BaseException, index: int | None, path: tuple[str, ...]
) -> Exception:
    """The error a runner raises for a failed node: names node, item and inputs."""
    name = step.node.name
    where = f" for item {index}" if index is not None else ""
    if isinstance(error, InterruptError):
        msg = f"{error} (in node {name!r}{where})"
        return InterruptError(msg)
    if isinstance(error, NodeError):  # from a nested graph: keep the innermost story
        inner = error
        msg = f"node {name!r}{where} failed inside: {inner}"
        return NodeError(msg, node=inner.node, index=index, path=inner.path)
    inputs = ", ".join(step.sources) or "no inputs"
    msg = (
        f"node {name!r}{where} failed with {type(error).__name__}: {error} "
        f"(inputs: {inputs}; path: {' > '.join(path) or '-'})"
    )
    return NodeError(msg, node=name, index=index, path=path)


def _graph_flow(
    call: Call, node: GraphNode, ctx: Context, keys: dict[str, str | None] | None
) -> Any:
    """The flow that runs a nested graph for one outer call."""
    inner_values = dict(zip(call.step.params, call.args))
    inner_keys = None
    if keys is not None:
        inner_keys = {p: keys.get(s) for p, s in zip(call.step.params, call.step.sources)}
    path = (*call.path, node.name)
    inner_outputs = tuple(node.output_map)
    over = [p for p, s in zip(call.step.params, call.step.sources) if s in node.map_over]

    def flow() -> Flow:
        if not over:
            plan = build_plan(node.graph, inner_outputs, inner_values)
            values, _ = yield from item_flow(
                plan, inner_values, ctx, index=call.index, path=path, keys=inner_keys
            )
            result = tuple(values[o] for o in inner_outputs)
        else:
            result = yield from _mapped_graph(call, node, ctx, inner_values, inner_keys, over)
        return result if len(result) != 1 else result[0]

    return flow


def _mapped_graph(
    call: Call,
    node: GraphNode,
    ctx: Context,
    values: dict[str, Any],
    keys: dict[str, str | None] | None,
    over: list[str],
) -> Flow:
    lists = {p: list(values[p]) for p in over}
    lengths = {p: len(v) for p, v in lists.items()}
    if len(set(lengths.values())) > 1:
        msg = f"graph node {node.name!r}: map_over inputs have unequal lengths {lengths}"
        raise ValueError(msg)
    n = next(iter(lengths.values()))
    constants = {p: v for p, v in values.items() if p not in lists}
    columns = lists
    key_cols: dict[str, list[str | None]] | None = None
    const_keys: dict[str, str | None] | None = None
    if keys is not None:
        key_cols = {p: [_elem_key(keys.get(p), i) for i in range(n)] for p in over}
        const_keys = {p: keys.get(p) for p in constants}
    inner_outputs = tuple(node.output_map)
    plan = build_plan(node.graph, inner_outputs, values)
    path = (*call.path, node.name)
    out = yield from batch_flow(
        plan,
        columns,
        constants,
        ctx,
        indices=list(range(n)),
        path=path,
        key_columns=key_cols,
        constant_keys=const_keys,
        raise_errors=True,
    )
    return tuple(list(out.column(o, n)) for o in inner_outputs)


def _elem_key(list_key: str | None, i: int) -> str | None:
    return None if list_key is None else hashing.combine(list_key, hashing.fingerprint(i) or "")


def item_flow(
    plan: Plan,
    values: dict[str, Any],
    ctx: Context,
    *,
    index: int | None = None,
    path: tuple[str, ...] | None = None,
    keys: dict[str, str | None] | None = None,
) -> Flow:
    """Run ``plan`` for one item: yields ready calls, returns ``(values, keys)``.

    ``values`` holds the given inputs and is filled with the outputs in place.
    """
    bus = ctx.bus if ctx.bus.active else None
    cache = ctx.cache
    if path is None:
        path = (plan.graph.name,)
    if cache is not None and keys is None:
        keys = {}
    steps = plan.steps
    dependents = plan.dependents
    waiting = list(plan.n_deps)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    remaining = len(steps)
    t_graph = 0.0
    if bus is not None:
        t_graph = _perf()
        bus.publish(
            GraphStarted(path, plan.graph.name, tuple(plan.given), plan.outputs, index, plan.graph)
        )
    ictx = ctx.interactive
    if plan.simple and ctx.inline and keys is None and bus is None and ictx is None:
        # Nothing to cache, observe or answer, and only plain functions: calling them
        # here in plan order is what the runner would do anyway, minus the round trips.
        for step in steps:
            try:
                values[step.output] = step.node.func(*step.fetch(values))  # type: ignore[index]
            except Exception as exc:
                raise node_error(step, exc, index, path) from exc
        return values, {}
    while remaining:
        calls = []
        for i in ready:  # cache hits append released steps to `ready` while we walk it
            step = steps[i]
            call = Call(step, step.fetch(values), index, path, bus, i, ictx)
            if keys is not None and _cached(call, ctx, values, keys):
                remaining -= 1
                for j in dependents[i]:
                    waiting[j] -= 1
                    if not waiting[j]:
                        ready.append(j)
                continue
            if step.node.kind == "graph":
                call.flow = _graph_flow(call, step.node, ctx, keys)  # type: ignore[arg-type]
            if bus is not None:
                bus.publish(NodeStarted(path, step.node.name, index))
                call.t0 = _perf()
            calls.append(call)
        ready = []
        if not remaining:
            break
        for call in (yield calls):
            step = call.step
            if call.error is not None:
                if bus is not None:
                    bus.publish(NodeFailed(path, step.node.name, call.error, index))
                    bus.publish(
                        GraphFinished(path, plan.graph.name, _perf() - t_graph, index, call.error)
                    )
                raise node_error(step, call.error, index, path) from call.error
            if keys is None and step.output is not None:
                values[step.output] = call.result
            else:
                _finish(call, ctx, values, keys)
            if bus is not None:
                bus.publish(NodeFinished(path, step.node.name, _perf() - call.t0, False, index))
            remaining -= 1
            for j in dependents[call.pos]:
                waiting[j] -= 1
                if not waiting[j]:
                    ready.append(j)
    if bus is not None:
        bus.publish(GraphFinished(path, plan.graph.name, _perf() - t_graph, index))
    return values, keys or {}


def _cached(call: Call, ctx: Context, values: dict[str, Any], keys: dict[str, str | None]) -> bool:
    """Compute the call's cache key; on a hit store the cached outputs and say so."""
    step = call.step
    node = step.node
    for s, v in zip(step.sources, call.args):
        if s not in keys:
            keys[s] = hashing.fingerprint(v)
    if node.cache:
        call.key = chain_key(node_fingerprint(node), [keys[s] for s in step.sources])
    if call.key is None or ctx.cache is None or node.kind == "graph":
        return False
    hit = ctx.cache.get(call.key)
    if hit is MISS:
        return False
    bus = call.bus
    if bus is not None:
        bus.publish(NodeStarted(call.path, node.name, call.index))
    try:
        _store(step, hit, values, keys, call.key)
    except TypeError:  # an entry that no longer fits the node: recompute it
        return False
    if bus is not None:
        bus.publish(NodeFinished(call.path, node.name, 0.0, True, call.index, 1, 1))
    return True


def _finish(call: Call, ctx: Context, values: dict[str, Any], keys: Any) -> None:
    step = call.step
    try:
        _store(step, call.result, values, keys, call.key)
    except TypeError as exc:
        raise node_error(step, exc, call.index, call.path) from exc
    if ctx.cache is not None and call.key is not None and step.node.kind != "graph":
        ctx.cache.set(call.key, call.result)


def _store(
    step: Step,
    result: Any,
    values: dict[str, Any],
    keys: dict[str, str | None] | None,
    key: str | None,
) -> None:
    for name, value in zip(step.node.outputs, _unpack(step, result)):
        values[name] = value
        if keys is not None:
            keys[name] = output_key(step, key, name, value)


from ._batch import batch_flow  # noqa: E402  (batch_flow builds on the helpers above)
