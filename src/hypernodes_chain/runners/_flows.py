"""The core's flows: a plan for one item, a plan over a batch, a nested graph.

Every decision about running a plan lives here, written as generators the way httpx
writes its auth flow: a flow *yields* the work that is ready (a list of `ItemCall`,
`ColumnCall`) and *receives* back the pieces that finished, in any order and any number
at a time. The flow decides everything else: cache look-ups and writes, cache keys,
events, unpacking outputs, failure records, when an intermediate column can be dropped.
Drivers (``_drive``) only execute the work.

`item_flow` runs a plan for one item and returns ``(values, keys)``. `batch_flow` runs a
`BatchTask`: column by column, every column whose inputs are ready at once (so independent
nodes overlap under a concurrent driver); a batch node gets its whole column once, a node
that reads only constants runs once per batch; a column nobody reads any more and that
is not a requested output is dropped as soon as its last reader has run.
"""

from __future__ import annotations

import time
from typing import Any

from .. import hashing
from ..cache import MISS
from ..events import GraphFinished, GraphStarted, NodeFailed, NodeFinished, NodeStarted
from ..graph import GraphNode
from ..plan import Plan, Step, build_plan
from ..results import ItemFailure
from ._invoke import plan_invokers
from ._keys import chain_key, node_error, output_key, store, unpack
from ._work import BatchOutcome, BatchTask, ColumnCall, Context, Flow, ItemCall

__all__ = ["batch_columns", "batch_flow", "item_flow"]

_perf = time.perf_counter
KeyColumns = dict[str, list[str | None]]


# -- one item ----------------------------------------------------------------------------


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
    local = ctx.local
    bus = local.bus if local.bus.active else None
    if path is None:
        path = (plan.graph.name,)
    if ctx.cache is not None and keys is None:
        keys = {}
    steps = plan.steps
    ilocal = local.interactive
    if plan.simple and local.inline and keys is None and bus is None and ilocal is None:
        # Nothing to cache, observe or answer, and only plain functions: calling them
        # here in plan order is what the driver would do anyway, minus the round trips.
        for step in steps:
            try:
                values[step.output] = step.node.func(*step.fetch(values))  # type: ignore[index]
            except Exception as exc:
                raise node_error(step, exc, index, path) from exc
        return values, {}
    invokers, dependents = plan_invokers(plan), plan.dependents
    waiting = list(plan.n_deps)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    remaining = len(steps)
    t_graph = 0.0
    if bus is not None:
        t_graph = _perf()
        bus.publish(
            GraphStarted(
                path=path,
                graph=plan.graph.name,
                inputs=tuple(plan.given),
                outputs=plan.outputs,
                index=index,
                graph_obj=plan.graph,
            )
        )
    while remaining:
        calls = []
        for i in ready:  # cache hits append released steps to `ready` while we walk it
            step, invoker = steps[i], invokers[i]
            call = ItemCall(
                step, invoker, step.fetch(values), index, path, bus, ilocal, i, ctx.settings
            )
            if keys is not None and _cached(call, ctx, values, keys):
                remaining -= 1
                for j in dependents[i]:
                    waiting[j] -= 1
                    if not waiting[j]:
                        ready.append(j)
                continue
            if invoker.nested:
                call.flow = graph_flow(call, step.node, ctx, keys)  # type: ignore[arg-type]
            if bus is not None:
                bus.publish(NodeStarted(path=path, node=step.node.name, index=index))
                call.t0 = _perf()
            calls.append(call)
        ready = []
        if not remaining:
            break
        for call in (yield calls):
            step = call.step
            if call.error is not None:
                if bus is not None:
                    bus.publish(
                        NodeFailed(path=path, node=step.node.name, error=call.error, index=index)
                    )
                    bus.publish(
                        GraphFinished(
                            path=path,
                            graph=plan.graph.name,
                            duration=_perf() - t_graph,
                            index=index,
                            error=call.error,
                        )
                    )
                raise node_error(step, call.error, index, path) from call.error
            if keys is None and step.output is not None:
                values[step.output] = call.result
            else:
                _finish(call, ctx, values, keys)
            if bus is not None:
                bus.publish(
                    NodeFinished(
                        path=path,
                        node=step.node.name,
                        duration=_perf() - call.t0,
                        cached=False,
                        index=index,
                    )
                )
            remaining -= 1
            for j in dependents[call.pos]:
                waiting[j] -= 1
                if not waiting[j]:
                    ready.append(j)
    if bus is not None:
        bus.publish(
            GraphFinished(path=path, graph=plan.graph.name, duration=_perf() - t_graph, index=index)
        )
    return values, keys or {}


def _cached(
    call: ItemCall, ctx: Context, values: dict[str, Any], keys: dict[str, str | None]
) -> bool:
    """Compute the call's cache key; on a hit store the cached outputs and say so."""
    step = call.step
    node = step.node
    for s, v in zip(step.sources, call.args):
        if s not in keys:
            keys[s] = hashing.fingerprint(v)
    if node.cache:
        fp = call.invoker.fingerprint(node, ctx.settings)
        call.key = chain_key(fp, [keys[s] for s in step.sources])
    if call.key is None or ctx.cache is None or not call.invoker.cacheable:
        return False
    hit = ctx.cache.get(call.key)
    if hit is MISS:
        return False
    bus = call.bus
    if bus is not None:
        bus.publish(NodeStarted(path=call.path, node=node.name, index=call.index))
    try:
        store(step, hit, values, keys, call.key)
    except TypeError:  # an entry that no longer fits the node: recompute it
        return False
    if bus is not None:
        bus.publish(
            NodeFinished(
                path=call.path,
                node=node.name,
                duration=0.0,
                cached=True,
                index=call.index,
                n_items=1,
                n_cached=1,
            )
        )
    return True


def _finish(call: ItemCall, ctx: Context, values: dict[str, Any], keys: Any) -> None:
    step = call.step
    try:
        store(step, call.result, values, keys, call.key)
    except TypeError as exc:
        raise node_error(step, exc, call.index, call.path) from exc
    if ctx.cache is not None and call.key is not None and call.invoker.cacheable:
        ctx.cache.set(call.key, call.result)


# -- a nested graph --------------------------------------------------------------------


def graph_flow(
    call: ItemCall, node: GraphNode, ctx: Context, keys: dict[str, str | None] | None
) -> Any:
    """The flow factory that runs a nested graph for one outer call."""
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
            result = yield from _mapped_graph(node, ctx, inner_values, inner_keys, over, path)
        return result if len(result) != 1 else result[0]

    return flow


def _mapped_graph(
    node: GraphNode,
    ctx: Context,
    values: dict[str, Any],
    keys: dict[str, str | None] | None,
    over: list[str],
    path: tuple[str, ...],
) -> Flow:
    lists = {p: list(values[p]) for p in over}
    lengths = {p: len(v) for p, v in lists.items()}
    if len(set(lengths.values())) > 1:
        msg = f"graph node {node.name!r}: map_over inputs have unequal lengths {lengths}"
        raise ValueError(msg)
    n = next(iter(lengths.values()))
    constants = {p: v for p, v in values.items() if p not in lists}
    key_cols: KeyColumns | None = None
    const_keys: dict[str, str | None] | None = None
    if keys is not None:
        key_cols = {p: [_elem_key(keys.get(p), i) for i in range(n)] for p in over}
        const_keys = {p: keys.get(p) for p in constants}
    inner_outputs = tuple(node.output_map)
    plan = build_plan(node.graph, inner_outputs, values)
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
    return tuple(list(out.column(o, n)) for o in inner_outputs)


def _elem_key(list_key: str | None, i: int) -> str | None:
    return None if list_key is None else hashing.combine(list_key, hashing.fingerprint(i) or "")


# -- a batch ---------------------------------------------------------------------------


def batch_flow(task: BatchTask) -> Flow:
    """Run one batch task of a map; returns its `BatchOutcome`."""
    ctx = Context(task.settings, task.local)
    return (
        yield from batch_columns(
            task.plan,
            task.columns,
            task.constants,
            ctx,
            indices=task.indices,
            key_columns=task.key_columns,
            constant_keys=task.constant_keys,
        )
    )


class _State:
    """Mutable bookkeeping of one batch flow."""

    def __init__(
        self,
        n: int,
        columns: dict[str, list[Any]],
        constants: dict[str, Any],
        key_columns: KeyColumns | None,
        constant_keys: dict[str, str | None] | None,
    ) -> None:
        self.n = n
        self.columns = dict(columns)
        self.constants = dict(constants)
        self.key_columns = key_columns
        self.constant_keys = constant_keys
        self.alive = list(range(n))
        self.failures: dict[int, ItemFailure] = {}


class _Batch:
    """The fixed facts of one batch flow, passed to its helpers."""

    __slots__ = ("bus", "cache_seconds", "ctx", "indices", "path", "raise_errors")

    def __init__(
        self, ctx: Context, indices: list[int], path: tuple[str, ...], raise_errors: bool
    ) -> None:
        self.ctx = ctx
        self.bus = ctx.local.bus if ctx.local.bus.active else None
        self.indices = indices
        self.path = path
        self.raise_errors = raise_errors
        self.cache_seconds = 0.0  # spent in cache look-ups and stores (timed when observed)


def batch_columns(
    plan: Plan,
    columns: dict[str, list[Any]],
    constants: dict[str, Any],
    ctx: Context,
    *,
    indices: list[int],
    path: tuple[str, ...] | None = None,
    key_columns: KeyColumns | None = None,
    constant_keys: dict[str, str | None] | None = None,
    raise_errors: bool | None = None,
) -> Flow:
    """Run ``plan`` over ``len(indices)`` items; returns a `BatchOutcome`.

    ``columns`` maps each varying input to its values (one per item), ``constants``
    the inputs shared by every item.
    """
    if raise_errors is None:
        raise_errors = ctx.on_error == "raise"
    b = _Batch(ctx, indices, path or (plan.graph.name,), raise_errors)
    if ctx.cache is not None:
        if key_columns is None:
            fingerprint = hashing.fingerprint
            key_columns = {name: [fingerprint(v) for v in col] for name, col in columns.items()}
        if constant_keys is None:
            constant_keys = {name: hashing.fingerprint(v) for name, v in constants.items()}
    st = _State(len(indices), columns, constants, key_columns, constant_keys)
    steps, invokers, dependents = plan.steps, plan_invokers(plan), plan.dependents
    waiting = list(plan.n_deps)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    readers = dict(plan.readers)
    wanted = set(plan.outputs)
    remaining, running = len(steps), 0

    def release(i: int) -> None:
        nonlocal remaining
        remaining -= 1
        for s in steps[i].sources:  # the data lifecycle: drop a column after its last read
            readers[s] -= 1
            if not readers[s] and s not in wanted:
                st.columns.pop(s, None)
                if st.key_columns is not None:
                    st.key_columns.pop(s, None)
        for j in dependents[i]:
            waiting[j] -= 1
            if not waiting[j]:
                ready.append(j)

    while remaining:
        work: list[Any] = []
        for i in ready:  # steps finished at once (cache hits) append to `ready` as we walk
            step, invoker = steps[i], invokers[i]
            if not st.alive:
                release(i)
                continue
            call: ItemCall | ColumnCall | None
            if all(s in st.constants for s in step.sources):
                call = _constant_call(i, step, invoker, st, b)
            else:
                call = _prepare_column(i, step, invoker, st, b)
            if call is None:
                release(i)
            else:
                work.append(call)
        ready = []
        if not work and not running:
            continue
        running += len(work)
        for done in (yield work):
            running -= 1
            if type(done) is ColumnCall:
                _finish_column(done, st, b)
                done.release()  # the call may outlive the batch's columns
            else:
                _finish_constant(done, st, b)
            release(done.pos)
        work = []
    outcome = BatchOutcome(st.columns, st.constants, st.key_columns or {}, st.failures)
    outcome.cache_seconds = b.cache_seconds
    return outcome


def _source_keys(st: _State, step: Step, pos: int) -> list[str | None]:
    out = []
    for s in step.sources:
        if s in st.constants:
            out.append(st.constant_keys.get(s) if st.constant_keys is not None else None)
        else:
            out.append(st.key_columns[s][pos] if st.key_columns is not None else None)
    return out


def _prepare_column(i: int, step: Step, invoker: Any, st: _State, b: _Batch) -> ColumnCall | None:
    """Cache look-ups, then the call for the misses (None: every row was a hit)."""
    node, ctx, bus = step.node, b.ctx, b.bus
    alive = st.alive
    keys: list[str | None] | None = None
    hits: list[int] = []
    if st.key_columns is not None and node.cache:
        fp = invoker.fingerprint(node, ctx.settings)
        keys = [None] * st.n
        for pos in alive:
            keys[pos] = chain_key(fp, _source_keys(st, step, pos))
        looked = [pos for pos in alive if keys[pos] is not None]
        if looked and ctx.cache is not None and invoker.cacheable:
            t0 = _perf() if bus is not None else 0.0
            found = ctx.cache.get_many([keys[p] for p in looked])  # type: ignore[misc]
            if bus is not None:
                b.cache_seconds += _perf() - t0
            for pos, value in zip(looked, found):
                if value is not MISS:
                    hits.append(pos)
                    _put(step, st, pos, value, keys[pos])
    hit_set = set(hits)
    positions = [p for p in alive if p not in hit_set] if hits else list(alive)
    n_items = len(positions) + len(hits)
    if bus is not None:
        bus.publish(NodeStarted(path=b.path, node=node.name, index=None, n_items=n_items))
    if not positions:
        if bus is not None:
            bus.publish(
                NodeFinished(
                    path=b.path,
                    node=node.name,
                    duration=0.0,
                    cached=True,
                    n_items=n_items,
                    n_cached=len(hits),
                )
            )
        return None
    full = len(positions) == st.n
    args: list[Any] = []
    constant_flags = []
    for s in step.sources:
        col = st.columns.get(s)
        if col is None:
            args.append(st.constants.get(s))
        else:
            args.append(col if full else [col[p] for p in positions])
        constant_flags.append(col is None)
    item_indices = b.indices if full else [b.indices[p] for p in positions]
    local = ctx.local.interactive
    call = ColumnCall(step, invoker, args, len(positions), item_indices, b.path, bus,
                      tuple(constant_flags), local, i, ctx.settings)  # fmt: skip
    call.positions, call.keys, call.hits = positions, keys, len(hits)
    if invoker.nested:
        flows = []
        for pos, row in zip(positions, call.rows):
            item = ItemCall(step, invoker, row, b.indices[pos], b.path, bus, local, i, ctx.settings)
            item_keys = None
            if st.key_columns is not None:
                item_keys = dict(zip(step.sources, _source_keys(st, step, pos)))
            flows.append(graph_flow(item, node, ctx, item_keys))  # type: ignore[arg-type]
        call.flows = flows
    call.t0 = _perf()
    return call


def _put(step: Step, st: _State, pos: int, result: Any, key: str | None) -> None:
    for name, value in zip(step.node.outputs, unpack(step, result)):
        col = st.columns.get(name)
        if col is None:
            col = st.columns[name] = [None] * st.n
        col[pos] = value
        if st.key_columns is not None:
            kcol = st.key_columns.get(name)
            if kcol is None:
                kcol = st.key_columns[name] = [None] * st.n
            kcol[pos] = output_key(step, key, name, value)


def _fail(step: Step, st: _State, b: _Batch, pos: int, error: BaseException) -> None:
    """Record that the item at ``pos`` failed (or raise, under ``on_error="raise"``); the
    caller publishes one `NodeFailed` for the batch (`_failed_event`)."""
    index = b.indices[pos]
    if b.raise_errors:
        _failed_event(step, b, pos, error, 1)
        raise node_error(step, error, index, b.path) from error
    if pos not in st.failures:  # the first node that failed the item tells its story
        st.failures[pos] = ItemFailure.from_exception(index, step.node.name, error, b.path)


def _failed_event(step: Step, b: _Batch, pos: int, error: BaseException, n: int) -> None:
    """One `NodeFailed` for the ``n`` items of the batch that failed in ``step``."""
    if b.bus is not None:
        index = b.indices[pos]
        b.bus.publish(
            NodeFailed(path=b.path, node=step.node.name, error=error, index=index, n_items=n)
        )


def _finish_column(call: ColumnCall, st: _State, b: _Batch) -> None:
    step, ctx = call.step, b.ctx
    positions, keys, results, failed = call.positions, call.keys, call.results, call.failed
    outputs = step.node.outputs
    n_failed = 0
    if not failed and len(positions) == st.n and len(outputs) == 1 and st.key_columns is None:
        st.columns[outputs[0]] = results  # the hot path: the column as it came
    else:
        gone: set[int] = set()
        first: tuple[int, BaseException] | None = None
        to_cache: list[tuple[str, Any]] = []
        cacheable = call.invoker.cacheable
        for row, (pos, result) in enumerate(zip(positions, results)):
            error = failed.get(row) if failed else None
            if error is None:
                key = keys[pos] if keys is not None else None
                try:
                    _put(step, st, pos, result, key)
                except TypeError as exc:
                    error = exc
                else:
                    if key is not None and cacheable:
                        to_cache.append((key, result))
                    continue
            gone.add(pos)
            _fail(step, st, b, pos, error)
            if first is None:
                first = pos, error
        if to_cache and ctx.cache is not None:
            t0 = _perf() if b.bus is not None else 0.0
            ctx.cache.set_many(to_cache)
            if b.bus is not None:
                b.cache_seconds += _perf() - t0
        if first is not None:
            _failed_event(step, b, first[0], first[1], len(gone))
        if gone:
            st.alive = [p for p in st.alive if p not in gone]
        n_failed = len(gone)
    if b.bus is not None:
        b.bus.publish(
            NodeFinished(
                path=b.path,
                node=step.node.name,
                duration=_perf() - call.t0,
                cached=False,
                n_items=len(positions) + call.hits,
                n_cached=call.hits,
                n_failed=n_failed,
            )
        )


def _constant_call(i: int, step: Step, invoker: Any, st: _State, b: _Batch) -> ItemCall | None:
    """A node that reads only constants runs once for the whole batch (None: cached)."""
    ctx, node = b.ctx, step.node
    local = ctx.local.interactive
    args = [st.constants[s] for s in step.sources]
    call = ItemCall(step, invoker, args, None, b.path, b.bus, local, i, ctx.settings)
    src_keys = None
    if st.constant_keys is not None:
        src_keys = {s: st.constant_keys.get(s) for s in step.sources}
        if node.cache:
            fp = invoker.fingerprint(node, ctx.settings)
            call.key = chain_key(fp, list(src_keys.values()))
    if b.bus is not None:
        b.bus.publish(NodeStarted(path=b.path, node=node.name, index=None, n_items=len(st.alive)))
    call.t0 = _perf()
    if call.key is not None and ctx.cache is not None and invoker.cacheable:
        hit = ctx.cache.get(call.key)
        if hit is not MISS:
            call.result = hit
            _store_constant(call, st, b, cached=True)
            return None
    if invoker.nested:
        call.flow = graph_flow(call, node, ctx, src_keys)  # type: ignore[arg-type]
    return call


def _finish_constant(call: ItemCall, st: _State, b: _Batch) -> None:
    if call.error is not None:
        _fail_all(call, st, b, call.error)
        return
    _store_constant(call, st, b, cached=False)


def _store_constant(call: ItemCall, st: _State, b: _Batch, *, cached: bool) -> None:
    values: dict[str, Any] = {}
    try:
        store(call.step, call.result, values, st.constant_keys, call.key)
    except TypeError as exc:
        _fail_all(call, st, b, exc)
        return
    st.constants.update(values)
    cache = b.ctx.cache
    if not cached and call.key is not None and cache is not None and call.invoker.cacheable:
        cache.set(call.key, call.result)
    if b.bus is not None:
        n = len(st.alive)
        b.bus.publish(
            NodeFinished(
                path=b.path,
                node=call.step.node.name,
                duration=_perf() - call.t0,
                cached=cached,
                n_items=n,
                n_cached=n if cached else 0,
            )
        )


def _fail_all(call: ItemCall, st: _State, b: _Batch, error: BaseException) -> None:
    """A once-per-batch node failed: every item still alive fails with it."""
    n = len(st.alive)
    for pos in list(st.alive):
        _fail(call.step, st, b, pos, error)
    if n:
        _failed_event(call.step, b, st.alive[0], error, n)
    st.alive = []
    if b.bus is not None:
        b.bus.publish(
            NodeFinished(
                path=b.path,
                node=call.step.node.name,
                duration=_perf() - call.t0,
                cached=False,
                n_items=n,
                n_failed=n,
            )
        )
