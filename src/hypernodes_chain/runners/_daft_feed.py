"""How a map's batch tasks reach Daft and come back: one row per `BatchTask`.

Daft 0.7 has no lazy source from a Python generator: a ``DataSource`` is asked for all its
tasks before the first is read, and a query computes ahead of a slow consumer. So the map
flow decides what is out (its in-flight window), and a feed hands exactly that to Daft:

- `StreamFeed` (Daft's native runner): ONE query per map, whose source is a single task
  that reads rows from a queue as the driver puts them; the UDF instances (and the engines
  they hold) live for the whole map.
- `WindowFeed` (Ray, where a source task runs on a worker and returns its rows only when
  it ends): one query per window of the tasks that are out.

The rows go through a `Lane` (the UDF and the row format): in Daft's threads of this
process the task stays here and the row holds its sequence number; elsewhere the task
travels as ``_remote`` bytes.
"""

from __future__ import annotations

import asyncio
import queue
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pyarrow as pa

from ..events import Event
from . import _daft_udf as udf
from . import _remote
from ._daft_types import daft
from ._work import BatchTask

__all__ = ["Lane", "StreamFeed", "WindowFeed"]

_TO = "Daft's UDF processes"
_Row = dict[str, list[object]]  # one task's row: one value per column


class Lane:
    """The UDF a map's batch tasks run in, and the rows that carry them there and back.

    ``here``: Daft's threads of this process (the task is looked up by sequence number);
    otherwise the task is packed (``_remote``) and run by a function UDF, or by the class
    UDF ``udf_class`` (``daft.cls``: concurrency, GPUs, one broker per instance).
    """

    def __init__(self, first: BatchTask, *, here: bool, udf_class: Any = None) -> None:
        self.here = here
        self.listen = first.local.bus.active
        self.tasks: dict[int, BatchTask] = {}  # out in Daft, by sequence number
        if here:
            self.token = uuid.uuid4().hex
            self.store = udf.Here.registry[self.token] = udf.Here(self.token, self.listen)
            self.schema = pa.schema([("seq", pa.int64())])
            return
        self.parts = _remote.SharedParts(lambda blob: blob, to=_TO)
        self.token, self.shared = self.parts.part(first)  # the UDF's own: sent once
        self.schema = pa.schema(
            [("seq", pa.int64()), ("token", pa.string()), ("shared", pa.binary()),
             ("blob", pa.binary())]
        )  # fmt: skip
        self.udf_class = udf_class

    def expression(self) -> Any:
        """The UDF over the rows' columns; it returns the reply column ``out``."""
        d = daft()
        col, dtype = d.col, d.DataType
        if self.here:
            fn = d.func.batch(return_dtype=dtype.int64(), batch_size=1, use_process=False)
            return fn(udf.run_here)(col("seq"), self.token).alias("out")
        args = col("blob"), col("token"), col("shared")
        if self.udf_class is None:
            fn = d.func.batch(return_dtype=dtype.binary(), batch_size=1)(udf.reply_rows)
            return fn(*args, self.shared, self.listen).alias("out")
        return self.udf_class(self.shared, self.listen)(*args).alias("out")

    def row(self, task: BatchTask) -> _Row:
        """The row that takes ``task`` to Daft (remembered until it comes back)."""
        self.tasks[task.seq] = task
        if self.here:
            self.store.tasks[task.seq] = task
            return {"seq": [task.seq]}
        token, shared = self.parts.part(task)
        own = b"" if token == self.token else shared
        blob = _remote.pack_batch(task, to=_TO)
        return {"seq": [task.seq], "token": [token], "shared": [own], "blob": [blob]}

    def receive(self, seq: int, out: object) -> tuple[BatchTask, list[Event]]:
        """The task a reply row is for, filled; and the events it raised."""
        task = self.tasks.pop(seq)
        if self.here:
            self.store.tasks.pop(seq, None)
            return task, self.store.events.pop(seq, [])
        return task, _remote.unpack_reply(task, cast(bytes, out))

    def close(self) -> None:
        if self.here:
            udf.Here.registry.pop(self.token, None)


def _stream_source(rows: queue.Queue[object], schema: pa.Schema) -> Any:
    """A Daft DataFrame whose one source task yields the record batches put on ``rows``
    (None ends it); it waits for each in a thread, never on Daft's event loop."""
    d = daft()
    daft_schema = d.Schema.from_pyarrow_schema(schema)
    task_base: Any = d.io.DataSourceTask
    source_base: Any = d.io.DataSource

    class _Task(task_base):  # type: ignore[misc]
        @property
        def schema(self) -> Any:
            return daft_schema

        async def read(self) -> AsyncIterator[object]:
            while True:
                batch = await asyncio.to_thread(rows.get)
                if batch is None:
                    return
                yield batch

    class _Source(source_base):  # type: ignore[misc]
        @property
        def name(self) -> str:
            return "hypernodes_chain map"

        @property
        def schema(self) -> Any:
            return daft_schema

        async def get_tasks(self, pushdowns: object) -> AsyncIterator[_Task]:
            yield _Task()

    return _Source().read()


class StreamFeed:
    """One Daft query for a whole map (native runner): rows go in as tasks go out."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self._rows: queue.Queue[object] = queue.Queue()
        self._batch = daft().recordbatch.RecordBatch
        self._empty = self._batch.empty(daft().Schema.from_pyarrow_schema(lane.schema))
        frame = _stream_source(self._rows, lane.schema)
        self._results: Iterator[dict[str, Any]] = frame.select("seq", lane.expression()).iter_rows()

    def put(self, task: BatchTask) -> None:
        self._rows.put(self._batch.from_pydict(self.lane.row(task)))
        # Daft passes a source's batch on only once the next one has come: an empty one
        # behind each row lets the row go at once
        self._rows.put(self._empty)

    def finished(self) -> list[tuple[BatchTask, list[Event]]]:
        """At least one finished task (blocks until one is)."""
        row = next(self._results)
        return [self.lane.receive(row["seq"], row["out"])]

    def close(self) -> None:
        self._rows.put(None)  # the source ends; what is still out finishes, then the query
        close = getattr(self._results, "close", None)
        if close is not None:
            close()
        self.lane.close()


class WindowFeed:
    """One Daft query per window of tasks (Ray): a source task returns rows when it ends."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self._queued: list[_Row] = []
        self._results: Iterator[dict[str, Any]] | None = None

    def put(self, task: BatchTask) -> None:
        self._queued.append(self.lane.row(task))

    def finished(self) -> list[tuple[BatchTask, list[Event]]]:
        while True:
            if self._results is None:
                if not self._queued:
                    msg = "the flow waits for work it never handed out"
                    raise RuntimeError(msg)
                self._results = self._query(self._queued)
                self._queued = []
            row = next(self._results, None)
            if row is not None:
                return [self.lane.receive(row["seq"], row["out"])]
            self._results = None

    def _query(self, rows: list[_Row]) -> Iterator[dict[str, Any]]:
        columns = {name: [v for r in rows for v in r[name]] for name in rows[0]}
        table = pa.table(columns, schema=self.lane.schema)
        frame = daft().from_arrow(table)
        return iter(frame.select("seq", self.lane.expression()).iter_rows())

    def close(self) -> None:
        close = getattr(self._results, "close", None)
        if close is not None:
            close()
        self.lane.close()
