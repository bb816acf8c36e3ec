"""Engine-aware maps: a schedule of engine segments, run by the one map loop.

When a map's plan asks for more distinct engines than the broker keeps alive (``max_live``),
running it batch by batch would stop and start models for every batch. Instead the plan is
cut into *segments* at engine changes (`plan_segments`: each uses one engine, plus the plain
nodes that can run beside it), and the items go through in *windows* of ``engine_window``:
the window's batches through segment 1, then through segment 2, and so on, so each engine
starts once per window.

`Schedule.passes` gives ``map_flow`` one pass per window and segment: the window's batches,
and the `SegmentPass` that makes each one a `BatchTask` of the segment's plan and takes it
back. The map loop runs every pass as it runs a plain map, so its in-flight window holds for
every segment (the driver runs a segment's batches side by side: threads, asyncio tasks,
Dask, Daft), and the batches that went through every segment reach the `Handoff` in input
order (resume, events, writer as for any map).

Between segments a batch is a `Carry`: its item indices, the columns that later segments or
the results need (mapped inputs, values read later, requested outputs) and their cache keys.
It waits in a `_Spill` file (Arrow IPC, one record batch per map batch, each value pickled,
with cloudpickle where pickle cannot), so memory stays O(in_flight x batch). An item that
failed in a segment is left out of the later ones and stays that item's failure; a value
that cannot be spilled fails its item, naming node and index. Spills live in the writer's
folder (``_spill``, cleared at start: whatever is there was left by a killed run) or in a
temporary folder, and are removed when the map ends.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import hashing
from .._optional import optional
from ..exceptions import NodeError
from ..plan import Plan, build_plan
from ..results import ItemFailure, Writer
from ._handoff import Handoff
from ._invoke import plan_invokers
from ._keys import node_error
from ._work import BatchOutcome, BatchTask, Context, Keys, MapFlow, Settings

__all__ = ["SPILL_DIR", "Carry", "Schedule", "SegmentPass", "plan_segments", "spill_folder"]

SPILL_DIR = "_spill"  # in a writer's folder: underscored, so readers of the dataset skip it
_Numbered = Iterator[tuple[int, list[int], list[list[object]]]]  # (first, indices, columns)


# -- the schedule ------------------------------------------------------------------------


def plan_segments(plan: Plan, settings: Settings) -> list[Plan] | None:
    """The plan cut at engine changes, or None when its engines fit the broker at once."""
    broker = settings.engines
    engine = [inv.engine_of(step.node) for step, inv in zip(plan.steps, plan_invokers(plan))]
    names = {e for e in engine if e is not None}
    if broker is None or len(names) <= getattr(broker, "max_live", math.inf):
        return None
    return _segment_plans(plan, _groups(plan, engine))


def _groups(plan: Plan, engine: list[str | None]) -> list[list[int]]:
    """Steps in segments: each takes every ready step that uses its engine (or none)."""
    steps = plan.steps
    made_by = {o: i for i, st in enumerate(steps) for o in st.node.outputs}
    deps = [{made_by[s] for s in st.sources if s in made_by} for st in steps]
    done: set[int] = set()
    groups: list[list[int]] = []
    while len(done) < len(steps):
        group: list[int] = []
        current: str | None = None
        while True:
            ready = [i for i in range(len(steps)) if i not in done and deps[i] <= done]
            if current is None:
                current = next((engine[i] for i in ready if engine[i] is not None), None)
            fits = [i for i in ready if engine[i] in (None, current)]
            if not fits:
                break
            group += fits
            done.update(fits)
        groups.append(group)
    return groups


def _segment_plans(plan: Plan, groups: list[list[int]]) -> list[Plan]:
    """One plan per group of steps; each segment's outputs are what later ones read and
    what the map returns."""
    steps, given = plan.steps, set(plan.given)
    segments = []
    for k, group in enumerate(groups):
        later = {s for g in groups[k + 1 :] for i in g for s in steps[i].sources}
        made = {o for i in group for o in steps[i].node.outputs}
        segments.append(build_plan(plan.graph, sorted(made & (later | set(plan.outputs))), given))
        given |= made
    return segments


@dataclass
class Carry:
    """One map batch between segments: ``seq`` (its place in the map's order), ``first``
    (the index of the first item read into it), the indices of its items (those an earlier
    run stored left out), columns by name, with a cache their keys, and the seconds its
    tasks spent in the cache so far."""

    seq: int
    first: int
    indices: list[int]
    columns: dict[str, list[object]]
    keys: dict[str, list[str | None]] | None
    cache_seconds: float = 0.0


class Schedule:
    """An engine-aware map: its segments, what their batch tasks share, and the failures of
    the current window (by item index: a failed item skips the later segments)."""

    def __init__(
        self,
        segments: list[Plan],
        plan: Plan,
        map_over: Sequence[str],
        constants: dict[str, object],
        constant_keys: Keys | None,
        ctx: Context,
        out: Handoff,
    ) -> None:
        self.segments, self.plan, self.map_over = segments, plan, list(map_over)
        self.constants, self.constant_keys = constants, constant_keys
        self.ctx, self.out = ctx, out
        self.keyed = ctx.cache is not None
        self.failures: dict[int, ItemFailure] = {}
        self.step_of = {o: st for st in plan.steps for o in st.node.outputs}
        self.crossing = _crossing(segments, plan, self.map_over)

    def passes(
        self, numbered: _Numbered, window: int, folder: Path
    ) -> Iterator[tuple[Iterator[Carry], SegmentPass]]:
        """For each window of ``window`` items, for each segment: the batches to run and
        the stage that runs them. A pass is over when the map loop asks for the next one."""
        windows = _Windows(numbered, self.map_over, window, self.keyed)
        w = 0
        while windows.more():
            self.failures = {}
            carries: Iterator[Carry] = windows.window()
            read: _Spill | None = None
            for k, segment in enumerate(self.segments):
                spill = None
                if k < len(self.segments) - 1:
                    spill = _Spill(folder / f"{w}-{k}.arrow", self.crossing[k], self.keyed)
                yield carries, SegmentPass(self, segment, spill)
                if read is not None:
                    read.remove()
                if spill is not None:
                    carries, read = spill.carries(), spill
            w += 1

    def task(self, segment: Plan, carry: Carry, alive: list[int]) -> BatchTask:
        """The batch task of ``segment`` over the items of ``carry`` at positions ``alive``."""
        names = [s for s in segment.given if s in carry.columns]
        keys = carry.keys
        if len(alive) < len(carry.indices):
            columns = {s: [carry.columns[s][p] for p in alive] for s in names}
            if keys is not None:
                keys = {s: [keys[s][p] for p in alive] for s in names}
        else:
            columns = {s: carry.columns[s] for s in names}
            keys = None if keys is None else {s: keys[s] for s in names}
        return BatchTask(
            segment, columns, self.constants, [carry.indices[p] for p in alive],
            self.ctx.settings, self.ctx.local, seq=carry.seq,
            constant_keys=self.constant_keys, key_columns=keys,
        )  # fmt: skip

    def merge(self, segment: Plan, carry: Carry, alive: list[int], outcome: BatchOutcome) -> None:
        """What a segment's task made, into ``carry`` (None at the items it did not run)."""
        n, m = len(carry.indices), len(alive)
        carry.cache_seconds += outcome.cache_seconds
        for pos, failure in outcome.failures.items():
            self.failures[carry.indices[alive[pos]]] = failure
        for name in segment.outputs:
            carry.columns[name] = _spread(outcome.column(name, m), alive, n)
            if carry.keys is not None:
                carry.keys[name] = _spread(outcome.keys.get(name, [None] * m), alive, n)

    def finished(self, carry: Carry) -> BatchTask | None:
        """A batch through every segment, as the task the `Handoff` takes (None: an earlier
        run stored all its items)."""
        if not carry.indices:
            return None
        failed = {p: self.failures[i] for p, i in enumerate(carry.indices) if i in self.failures}
        values = {k: carry.columns[k] for k in self.plan.outputs if k in carry.columns}
        mapped = {k: carry.columns[k] for k in self.map_over}
        task = BatchTask(self.plan, mapped, self.constants, carry.indices, self.ctx.settings,
                         self.ctx.local, seq=carry.seq)  # fmt: skip
        task.outcome = BatchOutcome(values, self.constants, {}, failed)
        task.outcome.cache_seconds = carry.cache_seconds
        return task

    def unspillable(self, carry: Carry, pos: int, name: str, error: Exception) -> None:
        """Item ``pos`` of ``carry`` has a value that cannot be spilled: it fails (the map
        stops under ``on_error="raise"``)."""
        index = carry.indices[pos]
        step = self.step_of.get(name)
        node = name if step is None else step.node.name
        what = f"map input {name!r}" if step is None else f"output {name!r} of node {node!r}"
        msg = f"{what} for item {index} cannot be spilled between engine segments: "
        msg += f"{type(error).__name__}: {error}"
        if _cloudpickle() is None:
            msg += " (cloudpickle pickles more: pip install 'hypernodes-chain[dask]')"
        exc = TypeError(msg)
        exc.__cause__ = error
        path = (self.plan.graph.name,)
        if self.ctx.on_error == "raise" and step is not None:
            raise node_error(step, exc, index, path) from exc
        if self.ctx.on_error == "raise":
            raise NodeError(msg, node=node, index=index, path=path) from exc
        if index not in self.failures:  # an item that failed before keeps its own story
            self.failures[index] = ItemFailure.from_exception(index, node, exc, path)


def _crossing(segments: list[Plan], plan: Plan, map_over: list[str]) -> list[list[str]]:
    """Per segment boundary, the columns that cross it: the mapped inputs, then what the
    segments so far made that later ones read or the map returns."""
    crossing, made = [], list(map_over)
    for k, segment in enumerate(segments[:-1]):
        made += [o for o in segment.outputs if o not in made]
        later = {s for seg in segments[k + 1 :] for st in seg.steps for s in st.sources}
        crossing.append([s for s in made if s in map_over or s in later or s in plan.outputs])
    return crossing


def _spread(values: Sequence[Any], alive: list[int], n: int) -> list[Any]:
    """``values`` of the items at positions ``alive``, as a column of ``n`` (None elsewhere)."""
    if len(alive) == n:
        return list(values)
    full: list[Any] = [None] * n
    for pos, value in zip(alive, values):
        full[pos] = value
    return full


class SegmentPass:
    """One segment over one window's batches: a stage of the map loop (``_map``).

    ``begin`` makes a batch's task of the segment (the items that failed earlier left out),
    ``done`` takes it back; a batch that is through goes to the next segment's spill, or,
    after the last segment, to the `Handoff`, whose reorder buffer this stage then is.
    """

    def __init__(self, schedule: Schedule, segment: Plan, spill: _Spill | None) -> None:
        self.schedule = schedule
        self.segment = segment
        self.spill = spill
        self._out: dict[int, tuple[Carry, list[int]]] = {}  # in flight, by sequence number

    def begin(self, carry: Carry) -> BatchTask | None:
        failed = self.schedule.failures
        alive = [p for p, i in enumerate(carry.indices) if i not in failed]
        if not alive or not self.segment.steps:
            self._through(carry)
            return None
        self._out[carry.seq] = (carry, alive)
        return self.schedule.task(self.segment, carry, alive)

    def done(self, task: BatchTask) -> None:
        carry, alive = self._out.pop(task.seq)
        assert task.outcome is not None  # a task that failed whole stopped the map
        self.schedule.merge(self.segment, carry, alive, task.outcome)
        self._through(carry)

    def _through(self, carry: Carry) -> None:
        schedule = self.schedule
        if self.spill is None:
            schedule.out.done(carry.seq, carry.first, schedule.finished(carry))
            return
        for pos, name, error in self.spill.add(carry):
            schedule.unspillable(carry, pos, name, error)

    def flush(self) -> MapFlow[None]:
        if self.spill is None:
            yield from self.schedule.out.flush()

    @property
    def waiting(self) -> int:
        return self.schedule.out.waiting if self.spill is None else 0

    @property
    def due(self) -> bool:
        return self.spill is None and self.schedule.out.due


# -- windows of items ----------------------------------------------------------------------


class _Windows:
    """The map's batches as `Carry`s, ``size`` items a window (a batch that crosses a
    window's end is cut there); nothing of a window is held here."""

    def __init__(self, numbered: _Numbered, map_over: list[str], size: int, keyed: bool) -> None:
        self._numbered = numbered
        self._map_over = map_over
        self._size = size
        self._keyed = keyed
        self._next: tuple[int, list[int], list[list[object]]] | None = None
        self._seq = 0

    def more(self) -> bool:
        """Whether a batch is left (it is read now, to be the next window's first)."""
        if self._next is None:
            self._next = next(self._numbered, None)
        return self._next is not None

    def window(self) -> Iterator[Carry]:
        n = 0
        while n < self._size and self.more():
            assert self._next is not None
            first, indices, batch = self._next
            self._next = None
            take = self._size - n
            if len(indices) > take:
                self._next = (indices[take], indices[take:], [c[take:] for c in batch])
                indices, batch = indices[:take], [c[:take] for c in batch]
            n += len(indices)
            yield self._carry(first, indices, batch)

    def _carry(self, first: int, indices: list[int], batch: list[list[object]]) -> Carry:
        columns = dict(zip(self._map_over, batch))
        keys: dict[str, list[str | None]] | None = None
        if self._keyed:  # the inputs' keys, as the batch flow would make them
            keys = {k: [hashing.fingerprint(v) for v in col] for k, col in columns.items()}
        self._seq += 1
        return Carry(self._seq - 1, first, indices, columns, keys)


# -- spills ---------------------------------------------------------------------------------


@contextlib.contextmanager
def spill_folder(writer: Writer | None) -> Iterator[Path]:
    """Where a map's spills go: ``_spill`` in the writer's folder (what a killed run left
    there is removed first; the writer's lock keeps other maps out), else a temporary
    folder. Removed when the map ends."""
    path = getattr(writer, "path", None)
    if path is None or not Path(path).is_dir():
        with tempfile.TemporaryDirectory(prefix="hypernodes-spill-") as tmp:
            yield Path(tmp)
        return
    folder = Path(path) / SPILL_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _cloudpickle() -> Any:
    """cloudpickle, or None where it is not installed (it comes with the dask extra)."""
    try:
        return optional("cloudpickle", "spilling values pickle cannot", "dask")
    except ImportError:
        return None


def _dumps(value: object) -> bytes:
    """``value`` pickled; with cloudpickle where pickle cannot (a class or a function
    declared in a function)."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise
        return bytes(cloudpickle.dumps(value, protocol=5))


class _Spill:
    """The batches of one window after one segment: an Arrow IPC file, one record batch per
    map batch, written as they finish and read back in input order. Columns: ``_index``,
    one of pickled values per name (null: None), one of keys per name when ``keyed``."""

    def __init__(self, path: Path, names: list[str], keyed: bool) -> None:
        self.path = path
        self.names = names
        self.keyed = keyed
        fields = [pa.field("_index", pa.int64())]
        fields += [pa.field(f"v{j}", pa.binary()) for j in range(len(names))]
        if keyed:
            fields += [pa.field(f"k{j}", pa.string()) for j in range(len(names))]
        self.schema = pa.schema(fields)
        self._writer: Any = None
        # seq -> (its record batch, first, cache seconds)
        self._at: dict[int, tuple[int | None, int, float]] = {}
        self._n = 0  # record batches written

    def add(self, carry: Carry) -> list[tuple[int, str, Exception]]:
        """Write ``carry``; returns ``(position, name, error)`` for each value that could
        not be pickled (written as None)."""
        n = len(carry.indices)
        if not n:
            self._at[carry.seq] = (None, carry.first, carry.cache_seconds)
            return []
        bad: list[tuple[int, str, Exception]] = []
        arrays = [pa.array(carry.indices, pa.int64())]
        for name in self.names:
            blobs = _encoded(carry.columns.get(name) or [None] * n, name, bad)
            arrays.append(pa.array(blobs, pa.binary()))
        if self.keyed:
            keys = carry.keys or {}
            arrays += [pa.array(keys.get(name) or [None] * n, pa.string()) for name in self.names]
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self.path), self.schema)
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self._at[carry.seq] = (self._n, carry.first, carry.cache_seconds)
        self._n += 1
        return bad

    def carries(self) -> Iterator[Carry]:
        """The batches in input order."""
        self._close()
        with contextlib.ExitStack() as stack:
            reader = None
            if self.path.exists():
                source = stack.enter_context(pa.memory_map(str(self.path)))
                reader = pa.ipc.open_file(source)
            for seq in sorted(self._at):
                at, first, seconds = self._at[seq]
                if at is None or reader is None:
                    carry = Carry(seq, first, [], {}, {} if self.keyed else None)
                else:
                    carry = self._carry(reader.get_batch(at), seq, first)
                carry.cache_seconds = seconds
                yield carry

    def _carry(self, batch: pa.RecordBatch, seq: int, first: int) -> Carry:
        k = len(self.names)
        columns = {
            name: [None if b is None else pickle.loads(b) for b in batch.column(1 + j).to_pylist()]
            for j, name in enumerate(self.names)
        }
        keys = None
        if self.keyed:
            keys = {name: batch.column(1 + k + j).to_pylist() for j, name in enumerate(self.names)}
        return Carry(seq, first, batch.column(0).to_pylist(), columns, keys)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def remove(self) -> None:
        self._close()
        self.path.unlink(missing_ok=True)


def _encoded(column: list[object], name: str, bad: list[tuple[int, str, Exception]]) -> list[Any]:
    """A column's values pickled (None as null); the ones that cannot be go to ``bad``."""
    blobs: list[Any] = []
    for pos, value in enumerate(column):
        if value is None:
            blobs.append(None)
            continue
        try:
            blobs.append(_dumps(value))
        except Exception as exc:
            bad.append((pos, name, exc))
            blobs.append(None)
    return blobs
