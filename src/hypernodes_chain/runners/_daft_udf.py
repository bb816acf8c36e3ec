"""What runs inside Daft for `DaftRunner`: the bodies of its UDFs.

They are module-level, so Daft pickles them by reference (a UDF process imports this
module, not the caller's). Two kinds of rows:

- a map's batches, one row per `BatchTask`. `run_here` runs in Daft's threads of the
  driver's process: the row holds the task's sequence number, the task itself is looked up
  in `Here` (nothing is pickled, a `MemoryCache` works). `reply_rows` and `BatchUDF` run
  anywhere (a UDF process, a Ray worker): the task travels as ``_remote`` bytes and its
  outcome and events come back as bytes (``_remote.reply_batch``). Errors never leave these
  as exceptions (Daft turns what a UDF process raises into a bare RuntimeError, the chain
  lost); they travel as data and the driver raises them.
- a DataFrame's rows (``map_dataframe``): `frame_rows` runs the core's batch flow over one
  Daft batch and returns the outputs as one struct column. Its errors are raised into
  Daft: they reach whoever collects the DataFrame.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..events import Event
from ..plan import Plan
from ._drive import SyncDriver
from ._flows import batch_flow
from ._keys import keys_of_constants
from ._remote import Recorder, reply_batch, unpack_shared
from ._work import BatchTask, Local, Settings

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["BatchUDF", "Frame", "FrameRef", "FrameUDF", "Here", "run_here"]

_DRIVER = SyncDriver()  # holds no state: safe in every thread


class Series(Protocol):
    """A ``daft.Series``, as far as these UDFs read one."""

    def to_pylist(self) -> list[Any]: ...


class Here:
    """The batch tasks one map hands to Daft's threads in this process, by sequence number."""

    registry: dict[str, Here] = {}  # token -> the map's tasks (one entry per running map)

    def __init__(self, token: str, listen: bool) -> None:
        self.token = token
        self.listen = listen
        self.tasks: dict[int, BatchTask] = {}
        self.events: dict[int, list[Event]] = {}

    def run(self, seq: int) -> None:
        """Run one task with the sync driver; its events are kept for the driver's thread."""
        task = self.tasks[seq]
        recorder = Recorder(self.listen)  # the driver's bus is not for Daft's threads
        try:
            task.outcome = recorder.run(task)
        except Exception as exc:
            task.error = exc
        finally:
            self.events[seq] = recorder.events


def run_here(seqs: Series, token: str) -> list[int]:
    """The UDF of the threads of the driver's process: runs the tasks named by ``seqs``."""
    here = Here.registry.get(token)
    done = seqs.to_pylist()
    if here is not None:  # None: the map has stopped (rows it put before are still read)
        for seq in done:
            here.run(seq)
    return list(done)


def _replies(
    blobs: Series, tokens: Series, shareds: Series, shared: bytes, listen: bool
) -> list[bytes]:
    # a row names its map part by token; it carries the part itself only when that is not
    # the UDF's own (``shared``): the plans of an engine-aware map's later segments
    rows = zip(blobs.to_pylist(), tokens.to_pylist(), shareds.to_pylist())
    return [reply_batch(token, own or shared, blob, listen) for blob, token, own in rows]


def reply_rows(
    blobs: Series, tokens: Series, shareds: Series, shared: bytes, listen: bool
) -> list[bytes]:
    """The function UDF over packed batch tasks (one per row)."""
    return _replies(blobs, tokens, shareds, shared, listen)


class BatchUDF:
    """The class UDF over packed batch tasks: one instance per UDF process (``concurrency``
    of them), each with its own engine broker (built on first use from the registrations)."""

    def __init__(self, shared: bytes, listen: bool) -> None:
        self.shared = shared
        self.listen = listen

    def __call__(self, blobs: Series, tokens: Series, shareds: Series) -> list[bytes]:
        return _replies(blobs, tokens, shareds, self.shared, self.listen)


# -- map_dataframe ---------------------------------------------------------------------------


class Frame:
    """What the rows of one ``map_dataframe`` need: plan, settings and the output struct."""

    # token -> frame: the driver's own (alive while an expression holds its `FrameRef`)
    live: weakref.WeakValueDictionary[str, Frame] = weakref.WeakValueDictionary()
    _made: dict[str, Frame] = {}  # token -> frame unpacked in this process
    _lock = threading.Lock()

    def __init__(
        self, plan: Plan, settings: Settings, dtype: Any, arrow: pa.StructType | None
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.constants = dict(plan.graph.bound)  # `Graph.bind`'s values: no column
        self.names = tuple(sorted(set(plan.given) - set(self.constants)))  # the UDF's order
        self.constant_keys = keys_of_constants(self.constants, settings.cache is not None)
        self.dtype = dtype  # the struct of the outputs
        self.arrow = arrow  # its Arrow type, or None when a field holds Python objects

    @classmethod
    def find(cls, token: str, shared: bytes) -> Frame:
        """This process's frame for ``token``: the driver's own, or unpacked once."""
        frame = cls.live.get(token) or cls._made.get(token)
        if frame is not None:
            return frame
        from ._daft_types import output_struct

        plan, _, _, settings = unpack_shared(token, shared)
        frame = Frame(plan, settings, *output_struct(plan))
        with cls._lock:
            return cls._made.setdefault(token, frame)


class FrameRef:
    """The UDF's argument that names a frame: it holds the frame in the driver's process
    (as long as some DataFrame's expression holds it) and pickles as token and packed part
    (Daft pickles arguments to hash them, and to send them to a UDF process)."""

    def __init__(self, frame: Frame, token: str, shared: bytes) -> None:
        self.token = token
        self.shared = shared  # empty where the frame never leaves this process
        self._frame = frame
        Frame.live[token] = frame

    @property
    def frame(self) -> Frame:
        return self._frame

    def __reduce__(self) -> tuple[Callable[[str, bytes], FrameRef], tuple[str, bytes]]:
        return (_frame_ref, (self.token, self.shared))


def _frame_ref(token: str, shared: bytes) -> FrameRef:
    return FrameRef(Frame.find(token, shared), token, shared)


def frame_rows(frame: Frame, columns: Sequence[Series]) -> Any:
    """Run the frame's plan over one Daft batch (one Series per input); the outputs as one
    struct Series. A failed node raises its `NodeError`."""
    values = [c.to_pylist() for c in columns]
    n = len(values[0]) if values else 0
    task = BatchTask(
        frame.plan,
        dict(zip(frame.names, values)),
        frame.constants,
        list(range(n)),
        frame.settings,
        Local(inline=True),
        constant_keys=frame.constant_keys,
    )
    outcome = _DRIVER.drive(batch_flow(task))
    outputs = frame.plan.outputs
    from ._daft_types import struct_series

    values = [outcome.column(o, n) for o in outputs]
    return struct_series(outputs, frame.dtype, frame.arrow, values, n)


def frame_udf(ref: FrameRef, *columns: Series) -> Any:
    """The function UDF of ``map_dataframe``."""
    return frame_rows(ref.frame, columns)


class FrameUDF:
    """The class UDF of ``map_dataframe`` (UDF processes, engines): one broker per instance."""

    def __init__(self, ref: FrameRef) -> None:
        self.ref = ref

    def __call__(self, *columns: Series) -> Any:
        return frame_rows(self.ref.frame, columns)
