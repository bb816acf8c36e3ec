"""One thread that forms device batches from whatever requests wait, for local engines.

Callers (threads, event loops, several LLM nodes sharing an engine) `submit` items under a
key; items share a device batch only when their keys are equal (the engine's key says what
must agree for one device call: schema and sampling). While the device is free and work
waits, the thread takes the group whose oldest item has waited longest (so no group
starves), up to ``max_batch_size`` of its items in arrival order, and hands them to
``run``. Items that arrive while a batch runs wait for the next one, so a new caller joins
the next device batch instead of queueing behind a whole earlier call. A group with fewer
than ``max_batch_size`` items waits at most ``batch_wait`` seconds for more (the dynamic
batchers of Triton and Ray Serve do the same): callers that come together (a map's batches,
the callers of a batch that just finished asking their next question) then fill one device
call instead of a short one followed by another; the device idles no longer than that.

Each submission is one `concurrent.futures.Future` of its results, in order: a thread
blocks on ``result()``, a coroutine awaits ``asyncio.wrap_future(...)`` (resolved on its own
loop through ``call_soon_threadsafe``), holding no thread. A submission whose future is
cancelled (its task was) has its items that still wait dropped. `close` fails every
submission not yet answered, the one on the device included, and nothing waits for ever.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import EngineError

__all__ = ["BatchScheduler"]

Run = Callable[[Any, list[Any], threading.Event], Sequence[Any]]


@dataclass(eq=False)
class _Submission:
    """One caller's items: their results fill in as device batches finish."""

    future: Future[list[Any]]
    results: list[Any]
    remaining: int


@dataclass(eq=False)
class _Entry:
    seq: int  # arrival order, across every group
    submission: _Submission
    index: int
    item: Any


@dataclass(eq=False)
class _Group:
    spec: Any  # what ``run`` needs besides the items; equal keys, interchangeable specs
    entries: deque[_Entry] = field(default_factory=deque)


def _settle(
    future: Future[list[Any]], result: Any = None, error: BaseException | None = None
) -> None:
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:  # cancelled by its caller, or already failed by close
        pass


class BatchScheduler:
    """A thread running ``run(spec, items, stopping)`` on batches formed from waiting items.

    ``run`` returns one result per item, in order (a value, or an exception that is that
    item's result); an exception it raises becomes the result of every item of that batch
    only. ``device`` is held around each batch (a stream elsewhere holds it too).
    ``stopping`` is set by `close`: ``run`` may end its batch early, its results are dropped.
    ``batch_wait``: seconds a group short of ``max_batch_size`` waits for more items.
    """

    def __init__(
        self,
        name: str,
        run: Run,
        *,
        max_batch_size: int,
        device: threading.Lock,
        batch_wait: float = 0.0,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait
        self._run = run
        self._device = device
        self._cond = threading.Condition()
        self._groups: dict[Hashable, _Group] = {}
        self._live: set[_Submission] = set()
        self._seq = itertools.count()
        self._closed = False
        self._error: Callable[[], BaseException] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name} scheduler", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, spec: Any, items: Sequence[Any]) -> Future[list[Any]]:
        """Queue ``items`` under ``key``; the future holds their results, in order."""
        future: Future[list[Any]] = Future()
        if not items:
            future.set_result([])
            return future
        submission = _Submission(future, [None] * len(items), len(items))
        with self._cond:
            if self._closed:
                assert self._error is not None
                _settle(future, error=self._error())
                return future
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(spec)
            for index, item in enumerate(items):
                group.entries.append(_Entry(next(self._seq), submission, index, item))
            self._live.add(submission)
            self._cond.notify()
        return future

    def waiting(self) -> int:
        """Items queued and not yet on the device."""
        with self._cond:
            return sum(len(g.entries) for g in self._groups.values())

    def close(self, error: Callable[[], BaseException]) -> None:
        """Stop the thread; every submission not yet answered fails with ``error()``
        (a fresh exception each). Returns once the thread has ended."""
        with self._cond:
            if not self._closed:
                self._closed, self._error = True, error
            self._stopping.set()
            pending = list(self._live)
            self._live.clear()
            self._groups.clear()
            self._cond.notify_all()
        for submission in pending:
            _settle(submission.future, error=error())
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        try:
            while self._wait_for_work():
                with self._device:  # formed once the device is free: the most items join
                    batch = self._take()
                    if batch is None:
                        continue
                    spec, entries = batch
                    results = self._run_batch(spec, entries)
                self._deliver(entries, results)
        except BaseException as exc:  # a bug here must not leave callers waiting
            msg = f"{self.name}: the scheduler failed: {exc!r}"
            self.close(lambda: EngineError(msg))
            raise

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self._groups and not self._closed:
                self._cond.wait()
            return not self._closed

    def _take(self) -> tuple[Any, list[_Entry]] | None:
        """Up to ``max_batch_size`` live items of the group whose oldest item waited longest
        (a short group first waits up to ``batch_wait`` for more)."""
        deadline = time.monotonic() + self.batch_wait
        with self._cond:
            while self._groups and not self._closed:
                key = min(self._groups, key=lambda k: self._groups[k].entries[0].seq)
                group = self._groups[key]
                left = deadline - time.monotonic()
                if len(group.entries) < self.max_batch_size and left > 0:
                    self._cond.wait(left)  # woken by each submit: look again
                    continue
                entries: list[_Entry] = []
                while group.entries and len(entries) < self.max_batch_size:
                    entry = group.entries.popleft()
                    if entry.submission.future.done():  # its caller cancelled it
                        self._live.discard(entry.submission)
                    else:
                        entries.append(entry)
                if not group.entries:
                    del self._groups[key]
                if entries:
                    return group.spec, entries
            return None

    def _run_batch(self, spec: Any, entries: list[_Entry]) -> list[Any]:
        try:
            results = list(self._run(spec, [e.item for e in entries], self._stopping))
            if len(results) != len(entries):
                msg = f"{self.name}: {len(results)} results for a batch of {len(entries)}"
                raise EngineError(msg)
            return results
        except Exception as exc:  # the device call failed: the items of this batch only
            return [exc] * len(entries)

    def _deliver(self, entries: list[_Entry], results: list[Any]) -> None:
        done = []
        with self._cond:
            for entry, result in zip(entries, results):
                submission = entry.submission
                if submission not in self._live:  # failed by close, or cancelled
                    continue
                submission.results[entry.index] = result
                submission.remaining -= 1
                if submission.remaining == 0:
                    self._live.discard(submission)
                    done.append(submission)
        for submission in done:
            _settle(submission.future, submission.results)
