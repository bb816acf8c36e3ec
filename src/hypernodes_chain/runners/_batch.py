"""The core's batch flow: a plan over many items, one node (column) at a time.

Positions are 0..n-1 inside the batch; ``indices[pos]`` is the item's index in the
whole map. A node whose inputs are all constants runs once for the batch; any other
node gets one `ColumnCall` with the rows of the items still alive and not cached (a
nested graph node gets one `Call` per item instead).
"""

from __future__ import annotations

import time
from typing import Any

from .. import hashing
from ..cache import MISS
from ..events import NodeFailed, NodeFinished, NodeStarted
from ..graph import GraphNode
from ..plan import Plan, Step
from ..results import ItemFailure
from ._calls import Call, ColumnCall, Failed
from ._core import (
    Context,
    Flow,
    _graph_flow,
    _store,
    _unpack,
    chain_key,
    node_error,
    node_fingerprint,
    output_key,
)

__all__ = ["BatchOutcome", "batch_flow"]

_perf = time.perf_counter

KeyColumns = dict[str, list[str | None]]


class BatchOutcome:
    """What `batch_flow` returns: output columns, their keys, and failed positions."""

    __slots__ = ("columns", "constants", "failures", "keys")

    def __init__(
        self,
        columns: dict[str, list[Any]],
        constants: dict[str, Any],
        keys: KeyColumns,
        failures: dict[int, ItemFailure],
    ) -> None:
        self.columns = columns
        self.constants = constants
        self.keys = keys
        self.failures = failures

    def column(self, name: str, n: int) -> list[Any]:
        if name in self.columns:
            return self.columns[name]
        if name in self.constants:
            return [self.constants[name]] * n
        return [None] * n  # never computed: every item failed earlier (or there are none)


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


def batch_flow(
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
    bus = ctx.bus if ctx.bus.active else None
    cache = ctx.cache
    if raise_errors is None:
        raise_errors = ctx.on_error == "raise"
    if path is None:
        path = (plan.graph.name,)
    n = len(indices)
    if cache is not None:
        if key_columns is None:
            fingerprint = hashing.fingerprint
            key_columns = {name: [fingerprint(v) for v in col] for name, col in columns.items()}
        if constant_keys is None:
            constant_keys = {name: hashing.fingerprint(v) for name, v in constants.items()}
    st = _State(n, columns, constants, key_columns, constant_keys)
    for step in plan.steps:  # topological: each column call waits for its inputs
        if not st.alive:
            break
        if all(s in st.constants for s in step.sources):
            yield from _constant_step(step, st, ctx, path, raise_errors, indices)
            continue
        calls, positions, hits, keys = _prepare_column(step, st, ctx, path, bus, indices)
        if bus is not None:
            bus.publish(NodeStarted(path, step.node.name, None, len(positions) + len(hits)))
        t0 = _perf()
        results: list[Any] = []
        any_failed = False
        if calls:
            yield from _wait_all(calls)
            results, any_failed = _collect(calls)
        n_failed = _finish_column(
            step, st, ctx, path, positions, keys, results, any_failed, raise_errors, indices
        )
        if bus is not None:
            bus.publish(
                NodeFinished(
                    path,
                    step.node.name,
                    _perf() - t0,
                    not positions,
                    None,
                    len(positions) + len(hits),
                    len(hits),
                    n_failed,
                )
            )
    return BatchOutcome(st.columns, st.constants, st.key_columns or {}, st.failures)


def _wait_all(calls: list[Any]) -> Flow:
    """Yield the calls, then keep waiting until the runner has sent every one back.

    A runner may send calls back a few at a time (the async runner sends whichever
    finish first); a column is complete only when all of its calls are.
    """
    pending = len(calls)
    finished = yield calls
    pending -= len(finished)
    while pending > 0:
        finished = yield []
        pending -= len(finished)


def _collect(calls: list[Any]) -> tuple[list[Any], bool]:
    """The column's results (in row order) and whether any of them failed."""
    if len(calls) == 1 and type(calls[0]) is ColumnCall:
        return calls[0].results, calls[0].n_failed > 0
    # one Call per item (nested graphs): results in the order the calls were made
    results = [Failed(c.error) if c.error is not None else c.result for c in calls]
    return results, any(c.error is not None for c in calls)


def _source_keys(st: _State, step: Step, pos: int) -> list[str | None]:
    out = []
    for s in step.sources:
        if s in st.constants:
            out.append(st.constant_keys.get(s) if st.constant_keys is not None else None)
        else:
            out.append(st.key_columns[s][pos] if st.key_columns is not None else None)
    return out


def _prepare_column(
    step: Step, st: _State, ctx: Context, path: tuple[str, ...], bus: Any, indices: list[int]
) -> tuple[list[Any], list[int], list[int], list[str | None] | None]:
    """Cache look-ups, then the calls for the misses.

    Returns the calls, the miss positions, the hit positions and the column's cache keys.
    """
    node = step.node
    alive = st.alive
    keys: list[str | None] | None = None
    hits: list[int] = []
    if st.key_columns is not None and node.cache:
        fp = node_fingerprint(node)
        keys = [None] * st.n
        for pos in alive:
            keys[pos] = chain_key(fp, _source_keys(st, step, pos))
        looked = [pos for pos in alive if keys[pos] is not None]
        if looked and ctx.cache is not None and node.kind != "graph":
            found = ctx.cache.get_many([keys[p] for p in looked])  # type: ignore[misc]
            for pos, value in zip(looked, found):
                if value is not MISS:
                    hits.append(pos)
                    _put(step, st, pos, value, keys[pos])
    hit_set = set(hits)
    positions = [p for p in alive if p not in hit_set] if hits else list(alive)
    sources = [st.columns.get(s) for s in step.sources]
    consts = [st.constants.get(s) for s in step.sources]
    constant_flags = tuple(col is None for col in sources)
    if len(positions) == st.n and not any(constant_flags):
        rows = list(zip(*sources)) if sources else [()] * st.n
    else:
        pairs = list(zip(sources, consts))
        rows = [tuple(c if col is None else col[p] for col, c in pairs) for p in positions]
    if not positions:
        return [], positions, hits, keys
    if isinstance(node, GraphNode):
        calls: list[Any] = []
        for pos, row in zip(positions, rows):
            call = Call(step, row, indices[pos], path, bus, ctx=ctx.interactive)
            item_keys = None
            if st.key_columns is not None:
                item_keys = dict(zip(step.sources, _source_keys(st, step, pos)))
            call.flow = _graph_flow(call, node, ctx, item_keys)
            calls.append(call)
        return calls, positions, hits, keys
    item_indices = indices if len(positions) == st.n else [indices[p] for p in positions]
    column = ColumnCall(step, rows, item_indices, path, bus, constant_flags, ctx.interactive)
    return [column], positions, hits, keys


def _put(step: Step, st: _State, pos: int, result: Any, key: str | None) -> None:
    for name, value in zip(step.node.outputs, _unpack(step, result)):
        col = st.columns.get(name)
        if col is None:
            col = st.columns[name] = [None] * st.n
        col[pos] = value
        if st.key_columns is not None:
            kcol = st.key_columns.get(name)
            if kcol is None:
                kcol = st.key_columns[name] = [None] * st.n
            kcol[pos] = output_key(step, key, name, value)


def _fail(
    step: Step,
    st: _State,
    path: tuple[str, ...],
    pos: int,
    error: BaseException,
    raise_errors: bool,
    indices: list[int],
    bus: Any,
) -> None:
    index = indices[pos]
    if bus is not None:
        bus.publish(NodeFailed(path, step.node.name, error, index))
    if raise_errors:
        raise node_error(step, error, index, path) from error
    st.failures[pos] = ItemFailure.from_exception(index, step.node.name, error, path)


def _finish_column(
    step: Step,
    st: _State,
    ctx: Context,
    path: tuple[str, ...],
    positions: list[int],
    keys: list[str | None] | None,
    results: list[Any],
    any_failed: bool,
    raise_errors: bool,
    indices: list[int],
) -> int:
    bus = ctx.bus if ctx.bus.active else None
    failed: set[int] = set()
    to_cache: list[tuple[str, Any]] = []
    fast = len(positions) == st.n and len(step.node.outputs) == 1 and st.key_columns is None
    if fast and not any_failed:
        st.columns[step.node.outputs[0]] = results
        return 0
    for pos, result in zip(positions, results):
        if type(result) is Failed:
            failed.add(pos)
            _fail(step, st, path, pos, result.error, raise_errors, indices, bus)
            continue
        key = keys[pos] if keys is not None else None
        try:
            _put(step, st, pos, result, key)
        except TypeError as exc:
            failed.add(pos)
            _fail(step, st, path, pos, exc, raise_errors, indices, bus)
            continue
        if key is not None and step.node.kind != "graph":
            to_cache.append((key, result))
    if to_cache and ctx.cache is not None:
        ctx.cache.set_many(to_cache)
    if failed:
        st.alive = [p for p in st.alive if p not in failed]
    return len(failed)


def _constant_step(
    step: Step,
    st: _State,
    ctx: Context,
    path: tuple[str, ...],
    raise_errors: bool,
    indices: list[int],
) -> Flow:
    """A node that reads only constants: run it once for the whole batch."""
    bus = ctx.bus if ctx.bus.active else None
    node = step.node
    call = Call(step, [st.constants[s] for s in step.sources], None, path, bus, ctx=ctx.interactive)
    src_keys = None
    if st.constant_keys is not None:
        src_keys = {s: st.constant_keys.get(s) for s in step.sources}
        if node.cache:
            call.key = chain_key(node_fingerprint(node), list(src_keys.values()))
    if bus is not None:
        bus.publish(NodeStarted(path, node.name, None, len(st.alive)))
    t0 = _perf()
    result: Any = MISS
    if call.key is not None and ctx.cache is not None and node.kind != "graph":
        result = ctx.cache.get(call.key)
    cached = result is not MISS
    if not cached:
        if isinstance(node, GraphNode):
            call.flow = _graph_flow(call, node, ctx, src_keys)
        yield from _wait_all([call])
        if call.error is not None:
            _fail_all(step, st, path, call.error, raise_errors, indices, bus, t0)
            return
        result = call.result
    values: dict[str, Any] = {}
    try:
        _store(step, result, values, st.constant_keys, call.key)
    except TypeError as exc:
        _fail_all(step, st, path, exc, raise_errors, indices, bus, t0)
        return
    st.constants.update(values)
    if not cached and call.key is not None and ctx.cache is not None and node.kind != "graph":
        ctx.cache.set(call.key, result)
    if bus is not None:
        n = len(st.alive)
        bus.publish(
            NodeFinished(path, node.name, _perf() - t0, cached, None, n, n if cached else 0)
        )


def _fail_all(
    step: Step, st: _State, path: tuple[str, ...], error: BaseException, raise_errors: bool,
    indices: list[int], bus: Any, t0: float,
) -> None:  # fmt: skip
    """A once-per-batch node failed: every item still alive fails with it."""
    n = len(st.alive)
    for pos in list(st.alive):
        _fail(step, st, path, pos, error, raise_errors, indices, bus)
    st.alive = []
    if bus is not None:
        bus.publish(NodeFinished(path, step.node.name, _perf() - t0, False, None, n, 0, n))
