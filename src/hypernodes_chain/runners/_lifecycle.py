"""The one life of a node call: key, look-up, events, store, cache write, failure record.

Whatever its shape, a node call lives the same life::

    cache key -> look-up (a hit is stored: done) -> NodeStarted -> the call (a driver)
    -> store the outputs -> cache write -> NodeFinished (NodeFailed first, for failures)

Three shapes share it, each a ``begin`` (up to the call) and an ``end`` (after it):

- an item of a run or of a nested graph (`begin_item` / `end_item`): values land in the
  item's dict of values, a failure raises the node's error;
- the rows of a batch (`begin_column` / `end_column`): values land in the batch's
  columns, a failure is recorded per item (or raised, under ``on_error="raise"``);
- a node that reads only constants, once for a whole batch (`begin_constant` /
  `end_constant`): its value is a constant of the batch, a failure fails every item.

Every ``Node*`` event is built here (`_started`, `_finished`, `_failed`) and the cache is
read and written only here, so a change to caching, events or failure records (retries,
provenance, tracing) lands once. The flows (``_flows``) only schedule.
"""

from __future__ import annotations

import time
from typing import Any

from .. import hashing
from ..cache import MISS
from ..events import EventBus, NodeFailed, NodeFinished, NodeStarted
from ..plan import Step
from ..results import ItemFailure
from ._keys import chain_key, node_error, output_key, store, unpack
from ._work import ColumnCall, Context, Invoker, ItemCall, Keys

__all__ = [
    "Batch",
    "begin_column",
    "begin_constant",
    "begin_item",
    "end_column",
    "end_constant",
    "end_item",
]

_perf = time.perf_counter
KeyColumns = dict[str, list[str | None]]


# -- the events ---------------------------------------------------------------------------


def _started(
    bus: EventBus,
    path: tuple[str, ...],
    step: Step,
    index: int | None,
    n: int,
    batch: int | None = None,
) -> None:
    bus.publish(NodeStarted(path=path, node=step.node.name, index=index, n_items=n, batch=batch))


def _finished(
    bus: EventBus,
    path: tuple[str, ...],
    step: Step,
    t0: float | None,
    *,
    index: int | None = None,
    n: int = 1,
    n_cached: int = 0,
    n_failed: int = 0,
    tokens: tuple[int, int] | None = None,
    batch: int | None = None,
) -> None:
    """``t0`` None: every item came from the cache (no time spent in the node).
    ``tokens``: the (prompt, completion) tokens of the engine calls the node made.
    ``batch``: the first item of the batch the event covers (None for one item's call)."""
    prompt_tokens, completion_tokens = tokens or (0, 0)
    bus.publish(
        NodeFinished(
            path=path,
            node=step.node.name,
            duration=0.0 if t0 is None else _perf() - t0,
            cached=t0 is None,
            index=index,
            n_items=n,
            n_cached=n_cached,
            n_failed=n_failed,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            batch=batch,
        )
    )


def _failed(
    bus: EventBus,
    path: tuple[str, ...],
    step: Step,
    error: BaseException,
    index: int | None,
    n: int,
    batch: int | None = None,
) -> None:
    """One event for the ``n`` items that failed in ``step`` (``index``: the first)."""
    event = NodeFailed(
        path=path, node=step.node.name, error=error, index=index, n_items=n, batch=batch
    )
    bus.publish(event)


def _cacheable(ctx: Context, invoker: Invoker, key: str | None) -> bool:
    return key is not None and ctx.cache is not None and invoker.cacheable


# -- an item --------------------------------------------------------------------------------


def begin_item(call: ItemCall, ctx: Context, values: dict[str, Any], keys: Keys | None) -> bool:
    """Key and look-up: True when the cache answered (the outputs are stored). Otherwise
    the call is made ready: the flow it drives attached, `NodeStarted` published."""
    if keys is not None and _item_hit(call, ctx, values, keys):
        return True
    call.flow = call.invoker.flow(call, ctx, keys)
    if call.bus is not None:
        _started(call.bus, call.path, call.step, call.index, 1)
        call.t0 = _perf()
    return False


def _item_hit(call: ItemCall, ctx: Context, values: dict[str, Any], keys: Keys) -> bool:
    step = call.step
    for s, v in zip(step.sources, call.args):
        if s not in keys:
            keys[s] = hashing.fingerprint(v)
    if step.node.cache:
        fp = call.invoker.fingerprint(step.node, ctx.settings)
        call.key = chain_key(fp, [keys[s] for s in step.sources])
    if not _cacheable(ctx, call.invoker, call.key):
        return False
    hit = ctx.cache.get(call.key)  # type: ignore[union-attr,arg-type]
    if hit is MISS:
        return False
    try:
        store(step, hit, values, keys, call.key)
    except TypeError:  # an entry that no longer fits the node: recompute it
        return False
    if call.bus is not None:
        _started(call.bus, call.path, step, call.index, 1)
        _finished(call.bus, call.path, step, None, index=call.index, n_cached=1)
    return True


def end_item(call: ItemCall, ctx: Context, values: dict[str, Any], keys: Keys | None) -> None:
    """Store a finished call's outputs and cache them; a failure raises the node's error."""
    step, bus = call.step, call.bus
    if call.error is not None:
        if bus is not None:
            _failed(bus, call.path, step, call.error, call.index, 1)
        raise node_error(step, call.error, call.index, call.path) from call.error
    if keys is None and step.output is not None:
        values[step.output] = call.result  # nothing to key: the one output as it came
    else:
        try:
            store(step, call.result, values, keys, call.key)
        except TypeError as exc:
            raise node_error(step, exc, call.index, call.path) from exc
    if _cacheable(ctx, call.invoker, call.key):
        ctx.cache.set(call.key, call.result)  # type: ignore[union-attr,arg-type]
    if bus is not None:
        _finished(bus, call.path, step, call.t0, index=call.index, tokens=call.tokens)


# -- a batch ---------------------------------------------------------------------------------


class Batch:
    """What the calls of one batch flow read and write: its columns and constants, their
    cache keys, the items still alive, the failure records, and who listens."""

    __slots__ = (
        "alive",
        "bus",
        "cache_seconds",
        "columns",
        "constant_keys",
        "constants",
        "ctx",
        "failures",
        "indices",
        "key_columns",
        "n",
        "path",
        "raise_errors",
    )

    def __init__(
        self,
        ctx: Context,
        indices: list[int],
        path: tuple[str, ...],
        columns: dict[str, list[Any]],
        constants: dict[str, Any],
        key_columns: KeyColumns | None,
        constant_keys: Keys | None,
        *,
        raise_errors: bool,
    ) -> None:
        self.ctx = ctx
        self.bus = ctx.local.bus if ctx.local.bus.active else None
        self.indices = indices
        self.path = path
        self.raise_errors = raise_errors
        self.n = len(indices)
        self.columns = dict(columns)
        self.constants = dict(constants)
        self.key_columns = key_columns
        self.constant_keys = constant_keys
        self.alive = list(range(self.n))
        self.failures: dict[int, ItemFailure] = {}
        self.cache_seconds = 0.0  # spent in cache look-ups and stores (timed when observed)

    def source_keys(self, step: Step, pos: int) -> list[str | None]:
        """The cache keys of ``step``'s inputs for the item at ``pos``."""
        out = []
        for s in step.sources:
            if s in self.constants:
                out.append(self.constant_keys.get(s) if self.constant_keys is not None else None)
            else:
                out.append(self.key_columns[s][pos] if self.key_columns is not None else None)
        return out

    def put(self, step: Step, pos: int, result: object, key: str | None) -> None:
        """The outputs of ``step`` for the item at ``pos`` (raises TypeError on a misfit)."""
        for name, value in zip(step.node.outputs, unpack(step, result)):
            if name not in step.used:  # given (an override) or read by nobody
                continue
            col = self.columns.get(name)
            if col is None:
                col = self.columns[name] = [None] * self.n
            col[pos] = value
            if self.key_columns is not None:
                kcol = self.key_columns.get(name)
                if kcol is None:
                    kcol = self.key_columns[name] = [None] * self.n
                kcol[pos] = output_key(step, key, name, value)

    def fail(self, step: Step, pos: int, error: BaseException) -> None:
        """Record that the item at ``pos`` failed (or raise, under ``on_error="raise"``);
        the caller publishes one `NodeFailed` for all the items that failed in ``step``."""
        index = self.indices[pos]
        if self.raise_errors:
            if self.bus is not None:
                _failed(self.bus, self.path, step, error, index, 1, self.indices[0])
            raise node_error(step, error, index, self.path) from error
        if pos not in self.failures:  # the first node that failed the item tells its story
            self.failures[pos] = ItemFailure.from_exception(index, step.node.name, error, self.path)

    def timed_cache(self, t0: float) -> None:
        self.cache_seconds += _perf() - t0


# -- the rows of a batch -------------------------------------------------------------------


def begin_column(pos: int, step: Step, invoker: Invoker, b: Batch) -> ColumnCall | None:
    """Keys and look-ups for the items alive, then the call for the misses (None: every
    item was a hit)."""
    keys, hits = _column_hits(step, invoker, b)
    hit_set = set(hits)
    positions = [p for p in b.alive if p not in hit_set] if hits else list(b.alive)
    n_items = len(positions) + len(hits)
    if b.bus is not None:
        _started(b.bus, b.path, step, None, n_items, b.indices[0])
    if not positions:
        if b.bus is not None:
            _finished(b.bus, b.path, step, None, n=n_items, n_cached=len(hits), batch=b.indices[0])
        return None
    call = _column_call(pos, step, invoker, b, positions)
    call.positions, call.keys, call.hits = positions, keys, len(hits)
    call.flows = invoker.flows(call, b.ctx, lambda p: _row_keys(b, step, p))
    call.t0 = _perf()
    return call


def _column_hits(
    step: Step, invoker: Invoker, b: Batch
) -> tuple[list[str | None] | None, list[int]]:
    """The keys of the items alive (None: no keys in this batch) and the cache hits,
    stored in the batch's columns."""
    if b.key_columns is None or not step.node.cache:
        return None, []
    ctx, bus = b.ctx, b.bus
    fp = invoker.fingerprint(step.node, ctx.settings)
    keys: list[str | None] = [None] * b.n
    for pos in b.alive:
        keys[pos] = chain_key(fp, b.source_keys(step, pos))
    looked = [pos for pos in b.alive if keys[pos] is not None]
    hits: list[int] = []
    if looked and ctx.cache is not None and invoker.cacheable:
        t0 = _perf() if bus is not None else 0.0
        found = ctx.cache.get_many([keys[p] for p in looked])  # type: ignore[misc]
        if bus is not None:
            b.timed_cache(t0)
        for pos, value in zip(looked, found):
            if value is not MISS:
                hits.append(pos)
                b.put(step, pos, value, keys[pos])
    return keys, hits


def _column_call(
    pos: int, step: Step, invoker: Invoker, b: Batch, positions: list[int]
) -> ColumnCall:
    full = len(positions) == b.n
    args: list[Any] = []
    constant = []
    for s in step.sources:
        col = b.columns.get(s)
        if col is None:
            args.append(b.constants.get(s))
        else:
            args.append(col if full else [col[p] for p in positions])
        constant.append(col is None)
    indices = b.indices if full else [b.indices[p] for p in positions]
    local, ctx = b.ctx.local.interactive, b.ctx
    return ColumnCall(step, invoker, args, len(positions), indices, b.path, b.bus,
                      tuple(constant), local, pos, ctx.settings)  # fmt: skip


def _row_keys(b: Batch, step: Step, pos: int) -> Keys | None:
    if b.key_columns is None:
        return None
    return dict(zip(step.sources, b.source_keys(step, pos)))


def end_column(call: ColumnCall, b: Batch) -> None:
    """Store the rows' outputs, cache them, record the failed items, then the events."""
    step, positions = call.step, call.positions
    outputs = step.node.outputs
    n_failed = 0
    if not call.failed and len(positions) == b.n and len(outputs) == 1 and b.key_columns is None:
        b.columns[outputs[0]] = call.results  # the hot path: the column as it came
    else:
        n_failed = _store_rows(call, b)
    if b.bus is not None:
        n, hits = len(positions) + call.hits, call.hits
        _finished(b.bus, b.path, step, call.t0, n=n, n_cached=hits, n_failed=n_failed,
                  tokens=call.tokens, batch=b.indices[0])  # fmt: skip


def _store_rows(call: ColumnCall, b: Batch) -> int:
    """Row by row: outputs stored, successes cached, failures recorded; the number failed."""
    step, keys, failed = call.step, call.keys, call.failed
    gone: list[tuple[int, BaseException]] = []
    to_cache: list[tuple[str, object]] = []
    for row, (pos, result) in enumerate(zip(call.positions, call.results)):
        error = failed.get(row) if failed else None
        if error is None:
            key = keys[pos] if keys is not None else None
            try:
                b.put(step, pos, result, key)
            except TypeError as exc:
                error = exc
            else:
                if _cacheable(b.ctx, call.invoker, key):
                    to_cache.append((key, result))  # type: ignore[arg-type]
                continue
        b.fail(step, pos, error)
        gone.append((pos, error))
    if to_cache:
        t0 = _perf() if b.bus is not None else 0.0
        b.ctx.cache.set_many(to_cache)  # type: ignore[union-attr]
        if b.bus is not None:
            b.timed_cache(t0)
    if gone:
        if b.bus is not None:
            first, error = gone[0]
            _failed(b.bus, b.path, step, error, b.indices[first], len(gone), b.indices[0])
        dead = {pos for pos, _ in gone}
        b.alive = [p for p in b.alive if p not in dead]
    return len(gone)


# -- once for a whole batch ----------------------------------------------------------------


def begin_constant(pos: int, step: Step, invoker: Invoker, b: Batch) -> ItemCall | None:
    """A node that reads only constants runs once for the whole batch (None: cached)."""
    ctx = b.ctx
    args = [b.constants[s] for s in step.sources]
    call = ItemCall(step, invoker, args, None, b.path, b.bus, ctx.local.interactive, pos,
                    ctx.settings)  # fmt: skip
    keys = None
    if b.constant_keys is not None:
        keys = {s: b.constant_keys.get(s) for s in step.sources}
        if step.node.cache:
            fp = invoker.fingerprint(step.node, ctx.settings)
            call.key = chain_key(fp, list(keys.values()))
    if b.bus is not None:
        _started(b.bus, b.path, step, None, len(b.alive), b.indices[0])
    call.t0 = _perf()
    if _cacheable(ctx, invoker, call.key):
        hit = ctx.cache.get(call.key)  # type: ignore[union-attr,arg-type]
        if hit is not MISS:
            call.result = hit
            _store_constant(call, b, cached=True)
            return None
    call.flow = invoker.flow(call, ctx, keys)
    return call


def end_constant(call: ItemCall, b: Batch) -> None:
    if call.error is not None:
        _fail_all(call, b, call.error)
    else:
        _store_constant(call, b, cached=False)


def _store_constant(call: ItemCall, b: Batch, *, cached: bool) -> None:
    values: dict[str, Any] = {}
    try:
        store(call.step, call.result, values, b.constant_keys, call.key)
    except TypeError as exc:
        _fail_all(call, b, exc)
        return
    b.constants.update(values)
    if not cached and _cacheable(b.ctx, call.invoker, call.key):
        b.ctx.cache.set(call.key, call.result)  # type: ignore[union-attr,arg-type]
    if b.bus is not None:
        n = len(b.alive)
        t0 = None if cached else call.t0
        _finished(b.bus, b.path, call.step, t0, n=n, n_cached=n if cached else 0,
                  tokens=call.tokens, batch=b.indices[0])  # fmt: skip


def _fail_all(call: ItemCall, b: Batch, error: BaseException) -> None:
    """A once-per-batch node failed: every item still alive fails with it."""
    n = len(b.alive)
    for pos in list(b.alive):
        b.fail(call.step, pos, error)
    if b.bus is not None:
        if n:
            _failed(b.bus, b.path, call.step, error, b.indices[b.alive[0]], n, b.indices[0])
        _finished(b.bus, b.path, call.step, call.t0, n=n, n_failed=n, batch=b.indices[0])
    b.alive = []
