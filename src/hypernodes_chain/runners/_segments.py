"""Engine-aware maps: never switch models per batch when they do not all fit at once.

When a map's plan asks for more distinct engines than the broker keeps alive (``max_live``),
running it batch by batch would stop and start models for every batch. Instead the plan is
cut into *segments* at engine changes (each segment uses one engine, plus any plain nodes
that can run alongside it), and the items go through in *windows* of ``engine_window``:
the whole window through segment 1, then through segment 2, and so on. The columns that
cross a segment boundary (mapped inputs, values later segments read, requested outputs,
cache keys) are spilled to Arrow IPC files in a temporary folder, one record batch per map
batch, so memory stays O(batch). Each engine starts once per window; results still leave
in input order, with failures in their items' places, to the same writer or list.
"""

from __future__ import annotations

import math
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import hashing
from ..plan import Plan, build_plan
from ..results import ItemFailure
from ._invoke import plan_invokers
from ._work import BatchOutcome, BatchTask, Context, Flow, MapFlow, Settings

__all__ = ["plan_segments", "segmented_batches"]


def plan_segments(plan: Plan, settings: Settings) -> list[Plan] | None:
    """The plan cut at engine changes, or None when its engines fit the broker at once."""
    broker = settings.engines
    invokers = plan_invokers(plan)
    engine = [inv.engine_of(step.node) for step, inv in zip(plan.steps, invokers)]
    names = {e for e in engine if e is not None}
    if broker is None or len(names) <= getattr(broker, "max_live", math.inf):
        return None
    steps = plan.steps
    made_by = {o: i for i, st in enumerate(steps) for o in st.node.outputs}
    deps = [{made_by[s] for s in st.sources if s in made_by} for st in steps]
    done: set[int] = set()
    groups: list[list[int]] = []
    while len(done) < len(steps):
        group: list[int] = []
        current: str | None = None
        while True:  # take every step that is ready and fits this segment's engine
            ready = [i for i in range(len(steps)) if i not in done and deps[i] <= done]
            if current is None:
                current = next((engine[i] for i in ready if engine[i] is not None), None)
            fits = [i for i in ready if engine[i] in (None, current)]
            if not fits:
                break
            group += fits
            done.update(fits)
        groups.append(group)
    segments = []
    given = set(plan.given)
    later_reads: list[set[str]] = [set() for _ in groups]  # names the later segments read
    for k in range(len(groups)):
        for j in range(k + 1, len(groups)):
            later_reads[k].update(s for i in groups[j] for s in steps[i].sources)
    for k, group in enumerate(groups):
        made = {o for i in group for o in steps[i].node.outputs}
        outputs = sorted(made & (later_reads[k] | set(plan.outputs)))
        segments.append(build_plan(plan.graph, outputs, given))
        given |= made
    return segments


class _Spill:
    """One Arrow IPC file of batches: ``_index`` and one binary column per value column
    (each value pickled), read back batch by batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None
        self._schema: pa.Schema | None = None
        self._names: list[str] = []

    def add(self, indices: list[int], columns: dict[str, list[Any]]) -> None:
        names = sorted(columns)
        if self._writer is None:
            self._names = names
            fields = [pa.field("_index", pa.int64())]
            fields += [pa.field(n, pa.binary()) for n in names]
            self._schema = pa.schema(fields)
            self._writer = pa.ipc.new_file(str(self.path), self._schema)
        arrays = [pa.array(indices, pa.int64())]
        for name in self._names:
            arrays.append(pa.array([pickle.dumps(v, 5) for v in columns[name]], pa.binary()))
        self._writer.write_batch(pa.record_batch(arrays, schema=self._schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def batches(self) -> Iterator[tuple[list[int], dict[str, list[Any]]]]:
        self.close()
        if self._schema is None:
            return
        with pa.memory_map(str(self.path)) as source:
            reader = pa.ipc.open_file(source)
            for k in range(reader.num_record_batches):
                batch = reader.get_batch(k)
                indices = batch.column(0).to_pylist()
                columns = {
                    name: [pickle.loads(b) for b in batch.column(name).to_pylist()]
                    for name in self._names
                }
                yield indices, columns
        self.path.unlink(missing_ok=True)


_KEY = "\x00key:"  # spilled cache keys travel as columns of their own


def segmented_batches(
    segments: Sequence[Plan],
    windows: Iterator[Iterator[tuple[int, list[int], dict[str, list[Any]]]]],
    constants: dict[str, Any],
    constant_keys: dict[str, str | None] | None,
    ctx: Context,
    report: Callable[[int, BatchTask], MapFlow[None]],
    plan: Plan,
) -> MapFlow[None]:
    """Each window through every segment in turn, then each batch handed to ``report``.

    ``windows`` yields, ``engine_window`` items at a time, iterators of ``(first, indices,
    input columns)`` map batches (skipped items already left out); each batch is spilled as
    it is read, so a window is never held in memory.
    """
    with tempfile.TemporaryDirectory(prefix="hypernodes-segments-") as tmp:
        for w, window in enumerate(windows):
            firsts = []
            spill = _Spill(Path(tmp) / f"{w}-0.arrow")
            for first, indices, columns in window:
                firsts.append(first)
                if ctx.cache is not None:  # the inputs' keys, as batch_columns would make them
                    for name in list(columns):
                        columns[_KEY + name] = [hashing.fingerprint(v) for v in columns[name]]
                spill.add(indices, columns)
            failures: dict[int, ItemFailure] = {}
            for k, segment in enumerate(segments):
                nxt = _Spill(Path(tmp) / f"{w}-{k + 1}.arrow")
                for indices, columns in spill.batches():
                    carried = yield from _run(segment, indices, columns, constants,
                                              constant_keys, ctx, failures)  # fmt: skip
                    nxt.add(indices, carried)
                spill = nxt
            for first, (indices, columns) in zip(firsts, spill.batches()):
                values = {k: v for k, v in columns.items() if not k.startswith(_KEY)}
                failed = {p: failures[i] for p, i in enumerate(indices) if i in failures}
                outcome = BatchOutcome(values, {}, {}, failed)
                mapped = {k: values[k] for k in plan.given if k in values}
                task = BatchTask(plan, mapped, constants, indices, ctx.settings, ctx.local)
                task.outcome = outcome
                yield from report(first, task)


def _run(
    segment: Plan,
    indices: list[int],
    columns: dict[str, list[Any]],
    constants: dict[str, Any],
    constant_keys: dict[str, str | None] | None,
    ctx: Context,
    failures: dict[int, ItemFailure],
) -> Flow[dict[str, list[Any]]]:
    """One map batch through one segment: its alive rows as a batch task; returns every
    column carried on (failed rows hold None), keys included."""
    alive = [p for p, i in enumerate(indices) if i not in failures]
    values = {k: v for k, v in columns.items() if not k.startswith(_KEY)}
    keys = {k[len(_KEY) :]: v for k, v in columns.items() if k.startswith(_KEY)}
    if not alive or not segment.steps:
        return columns
    names = [s for s in values if s in segment.given]
    task = BatchTask(
        segment,
        {s: [values[s][p] for p in alive] for s in names},
        constants,
        [indices[p] for p in alive],
        ctx.settings,
        ctx.local,
        constant_keys=constant_keys,
        key_columns={s: [keys[s][p] for p in alive] for s in names} if keys else None,
    )
    (done,) = yield [task]
    assert isinstance(done, BatchTask)
    if done.error is not None:
        raise done.error
    outcome = done.outcome
    assert outcome is not None
    n, m = len(indices), len(alive)
    for pos, failure in outcome.failures.items():
        p = alive[pos]
        failures[indices[p]] = failure.with_inputs({s: values[s][p] for s in names})
    carried = dict(columns)
    for name in segment.outputs:
        full: list[Any] = [None] * n
        for pos, value in zip(alive, outcome.column(name, m)):
            full[pos] = value
        carried[name] = full
        key_col = outcome.keys.get(name)
        if key_col is not None:
            kfull: list[Any] = [None] * n
            for pos, key in zip(alive, key_col):
                kfull[pos] = key
            carried[_KEY + name] = kfull
    return carried
