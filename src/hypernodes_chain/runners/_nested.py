"""Nested graphs: the invoker of a graph used as a node (``graph.as_node(...)``).

A call of a nested graph drives a flow of its own with the same driver: the inner plan
for one item (`item_flow`), or, when the node maps over some inputs, the inner plan over
their elements as one batch (`batch_columns`). The invoker builds that flow through the
``flow`` / ``flows`` hooks of the invoker protocol, so the core only asks whether a call
carries a flow. The inner plan holds only what the outputs used outside need (`Step.used`;
an output nobody outside reads is not computed, None holds its place); the inner nodes
cache themselves (the graph node's own result is never cached). The values the inner
graph binds (`Graph.bind`) join its inputs as constants. It registers itself for
`GraphNode`, as ``llm.py`` does for LLM nodes.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import hashing
from ..graph import GraphNode
from ..plan import Plan, Step, build_plan
from ._effects import Body, Nested
from ._flows import batch_columns, item_flow
from ._invoke import NodeInvoker, register_invoker
from ._work import ColumnCall, Context, Flow, FlowFactory, ItemCall, Keys

__all__ = ["GraphInvoker"]


class GraphInvoker(NodeInvoker):
    """A nested graph: its flow is driven by the same driver (its nodes cache themselves)."""

    cacheable = False

    def flow(self, call: ItemCall, ctx: Context, keys: Keys | None) -> FlowFactory:
        return graph_flow(call, call.step.node, ctx, keys)  # type: ignore[arg-type]

    def flows(
        self, call: ColumnCall, ctx: Context, keys: Callable[[int], Keys | None]
    ) -> list[FlowFactory]:
        out = []
        for row, (pos, args) in enumerate(zip(call.positions, call.rows)):
            item = ItemCall(call.step, call.invoker, args, call.indices[row], call.path,
                            call.bus, call.local, call.pos, call.settings)  # fmt: skip
            out.append(self.flow(item, ctx, keys(pos)))
        return out

    def item(self, call: ItemCall) -> Body:
        assert call.flow is not None  # set by `flow` before the call is handed out
        return (yield Nested(call.flow))


def graph_flow(call: ItemCall, node: GraphNode, ctx: Context, keys: Keys | None) -> FlowFactory:
    """The flow factory that runs a nested graph for one outer call."""
    step = call.step
    inner_values = {**node.graph.bound, **dict(zip(step.params, call.args))}
    inner_keys = None
    if keys is not None:
        inner_keys = {p: keys.get(s) for p, s in zip(step.params, step.sources)}
    path = (*call.path, node.name)
    inner_outputs = _used_inner_outputs(node, step)
    over = [p for p, s in zip(step.params, step.sources) if s in node.map_over]

    def flow() -> Flow[object]:
        plan = build_plan(node.graph, inner_outputs, inner_values)
        if not over:
            values, _ = yield from item_flow(
                plan, inner_values, ctx, index=call.index, path=path, keys=inner_keys
            )
            made = {o: values[o] for o in inner_outputs}
        else:
            made = yield from _mapped_graph(node, plan, ctx, inner_values, inner_keys, over, path)
        # an output nobody outside reads was not computed: None holds its place
        result = tuple(made.get(inner) for inner in node.output_map)
        return result if len(result) != 1 else result[0]

    return flow


def _used_inner_outputs(node: GraphNode, step: Step) -> tuple[str, ...]:
    """The inner outputs behind the node's outputs that the outer plan reads or returns
    (`Step.used`), so the inner plan holds only the inner nodes those need."""
    used = set(step.used)
    return tuple(inner for inner, outer in zip(node.output_map, node.outputs) if outer in used)


def _mapped_graph(
    node: GraphNode,
    plan: Plan,
    ctx: Context,
    values: dict[str, object],
    keys: Keys | None,
    over: list[str],
    path: tuple[str, ...],
) -> Flow[dict[str, list[object]]]:
    lists = {p: list(values[p]) for p in over}  # type: ignore[call-overload]
    lengths = {p: len(v) for p, v in lists.items()}
    if len(set(lengths.values())) > 1:
        msg = f"graph node {node.name!r}: map_over inputs have unequal lengths {lengths}"
        raise ValueError(msg)
    n = next(iter(lengths.values()))
    constants = {p: v for p, v in values.items() if p not in lists}
    key_cols: dict[str, list[str | None]] | None = None
    const_keys: Keys | None = None
    if keys is not None:
        key_cols = {p: [_elem_key(keys.get(p), i) for i in range(n)] for p in over}
        # a constant without a key (a value the inner graph binds) is keyed by its content
        const_keys = {
            p: keys[p] if p in keys else hashing.fingerprint(v) for p, v in constants.items()
        }
    out = yield from batch_columns(
        plan,
        lists,
        constants,
        ctx,
        indices=list(range(n)),
        path=path,
        key_columns=key_cols,
        constant_keys=const_keys,
        raise_errors=True,
    )
    return {o: list(out.column(o, n)) for o in plan.outputs}


def _elem_key(list_key: str | None, i: int) -> str | None:
    return None if list_key is None else hashing.combine(list_key, hashing.fingerprint(i) or "")


def _graph_invoker(step: Step) -> GraphInvoker:
    return _GRAPH


_GRAPH = GraphInvoker()
register_invoker(GraphNode, _graph_invoker)
