"""The batches of an engine map, each in a thread of its own, so that an engine is kept fed.

Under `Runner` a batch runs to its end before the next one starts, which is what a plain
graph wants (no hand-offs, no locks). A graph with LLM nodes wants the opposite: while one
batch waits for its slowest replies, the next batches' prompts should already be queued at
the engine, which schedules them (continuous batching, a pool of requests in flight). So
`FeedingDriver`, the driver of `Runner.map`, ships the batch tasks of a plan that calls
engines to threads (`BatchThreads`, one thread per batch in flight) and keeps driving the
map's flow here: the flow hands out the next batches as soon as one comes back, and puts
results back in input order as ever. A batch's events are kept in its thread and
published here when it returns, so subscribers are only ever called from this thread
(engine starts and stops excepted: the broker tells them as they happen). Batches that
may ask a question (interrupt handlers) stay here.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ._base import MAX_ENGINE_BATCHES
from ._drive import SyncDriver
from ._invoke import plan_engines
from ._remote import Recorder, publish
from ._work import BatchOutcome, BatchTask, Work

__all__ = ["BatchThreads", "FeedingDriver"]


class FeedingDriver(SyncDriver):
    """`SyncDriver` whose maps run the batch tasks of engine plans in threads."""

    def shipper(self) -> BatchThreads:
        return BatchThreads()


class BatchThreads:
    """The `Shipper` of one flow: batch tasks of engine plans out to threads, back when done.

    The map's ``in_flight`` bounds how many are out; a thread is started for each one
    out (the pool may hold as many as a map keeps out, not the CPU-sized default, which
    held batches back on small machines), and the pool (made on first use) ends with the
    flow.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._out: dict[Future[BatchOutcome], tuple[BatchTask, Recorder]] = {}

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def ships(self, piece: Work) -> bool:
        match piece:
            case BatchTask():
                return piece.local.interactive is None and bool(plan_engines(piece.plan))
            case _:
                return False

    def send(self, piece: Work) -> None:
        assert isinstance(piece, BatchTask)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                MAX_ENGINE_BATCHES, thread_name_prefix="hypernodes-batch"
            )
        recorder = Recorder(piece.local.bus.active)
        self._out[self._pool.submit(recorder.run, piece)] = (piece, recorder)

    def receive(self) -> list[Work]:
        done, _ = wait(self._out, return_when=FIRST_COMPLETED)
        back: list[Work] = []
        for future in done:
            task, recorder = self._out.pop(future)
            try:
                task.outcome = future.result()
            except Exception as exc:
                task.error = exc
            back.append(publish(task, task.local.bus, recorder.events))
        return back

    def close(self) -> None:
        """Give up the batches not started; those running finish in their threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._out.clear()
