"""`DaskRunner`: the core's flows, with their batch tasks and node calls run on Dask.

The map flow, the writer, the reorder buffer and the events all stay on the driver, as
under `Runner`; only the driver of the work differs (`DaskDriver`): each `BatchTask` of a
``map`` becomes one Dask task that runs the core's batch flow on a worker with the sync
driver, and each node call of ``run`` becomes one task, so independent nodes run on
different workers. Nested graphs are driven here, their calls shipped the same way; calls
that may wait for an interrupt's answer run here, where the answer is.

dask and distributed are imported when a runner first needs its client (extra ``dask``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._optional import optional
from ..cache import Cache, MemoryCache
from ..events import Subscriber
from . import _remote
from ._drive import SyncDriver
from ._work import BatchTask, ColumnCall, ItemCall, Work
from .runner import Runner

if TYPE_CHECKING:
    from distributed import Future

__all__ = ["DaskRunner"]

_LARGE = 1 << 20  # shared parts above this many bytes are scattered once, not sent per task


def _distributed() -> Any:
    return optional("distributed", "DaskRunner", "dask")


class DaskDriver(SyncDriver):
    """Ships batch tasks and node calls to a Dask cluster (`_Tasks`); drives the flows
    here with `SyncDriver.batches`."""

    def __init__(self, runner: DaskRunner) -> None:
        super().__init__()
        self.runner = runner
        self._parts = _remote.SharedParts(self._place)

    def shipper(self) -> _Tasks:
        return _Tasks(self)

    @staticmethod
    def _here(piece: Work) -> bool:
        """Nested graphs and calls that may wait for an interrupt's answer stay here."""
        match piece:
            case BatchTask():
                return piece.local.interactive is not None
            case ItemCall() | ColumnCall():
                return piece.carries_flow or piece.local is not None

    def _place(self, blob: bytes) -> object:
        """A map's shared part as it travels: a large one is scattered to every worker once
        instead of sent with every task."""
        if len(blob) > _LARGE:
            return self.runner.client.scatter(blob, broadcast=True, hash=False)
        return blob

    def _submit(self, client: Any, piece: Work) -> Any:
        """The piece's Dask task (a future)."""
        retries = self.runner.retries
        match piece:
            case BatchTask():
                token, shared = self._parts.part(piece)
                listen = piece.local.bus.active
                blob = _remote.pack_batch(piece)
                return client.submit(
                    _remote.reply_batch, token, shared, blob, listen, pure=False, retries=retries
                )
            case ItemCall() | ColumnCall():
                return client.submit(
                    _remote.run_call, _remote.pack_call(piece), pure=False, retries=retries
                )

    def _receive(self, future: Future[bytes], piece: Work) -> Work:
        """The piece, filled from its finished task; the events it raised are published."""
        try:
            blob = future.result()
        except Exception as exc:  # its worker died more often than ``retries``, ...
            _remote.fail(piece, exc)
            return piece
        match piece:
            case BatchTask():
                events = _remote.unpack_reply(piece, blob)
                return _remote.publish(piece, piece.local.bus, events)
            case ItemCall() | ColumnCall():
                return _remote.publish(piece, piece.bus, _remote.unpack_call(piece, blob))


class _Tasks:
    """The Dask tasks of one flow: futures out, pieces back as they finish."""

    def __init__(self, driver: DaskDriver) -> None:
        self.driver = driver
        self.client = driver.runner.client
        self.out: dict[Future[bytes], Work] = {}  # future -> its piece
        self.finished = _distributed().as_completed(loop=self.client.loop)

    @property
    def pending(self) -> bool:
        return bool(self.out)

    def ships(self, piece: Work) -> bool:
        return not self.driver._here(piece)

    def send(self, piece: Work) -> None:
        future = self.driver._submit(self.client, piece)
        self.out[future] = piece
        self.finished.add(future)

    def receive(self) -> list[Work]:
        done = self.finished.next_batch(block=True)
        return [self.driver._receive(f, self.out.pop(f)) for f in done]

    def close(self) -> None:
        if self.out:
            self.client.cancel(list(self.out), force=True)


class DaskRunner(Runner):
    """Run graphs on a Dask cluster; ``run``, ``map`` and ``imap`` are `Runner`'s.

    Parameters
    ----------
    client
        A ``distributed.Client``, a scheduler address (``"tcp://host:8786"``), or None: a
        ``distributed.LocalCluster`` of worker processes (one thread each, one per core)
        is started on first use.
    cache
        A `DiskCache`, reopened by path on every worker (one machine or a shared file
        system). A `MemoryCache` cannot be shared between processes and is refused.
    callbacks
        Subscribers of every event; events raised on workers travel back with their batch.
    engines
        An `EngineBroker` (or a dict of engines or factories): every worker process builds
        its own broker from the registrations and stops its engines when it closes.
    resources
        ``{name: factory or object}`` for ``resource(name)`` parameters: built once per
        worker process, closed when it closes (an object must pickle to go there).
    max_in_flight
        Batches submitted at once (default: twice the cluster's threads); the driver holds
        at most this many batches, whatever the length of the inputs.
    retries
        How often Dask runs a task again whose worker died (nothing is written twice: the
        writer is on the driver). An error in a node, or a value that cannot be pickled
        back, is the item's failure and never retried: it would recur.
    cluster_options
        Keywords of the ``LocalCluster`` started when ``client`` is None
        (``n_workers``, ``threads_per_worker``, ``memory_limit``, ...).

    ``close()``, the ``with`` block's exit and interpreter exit close the client and the
    cluster this runner started (a client passed in is left open).
    """

    def __init__(
        self,
        client: object = None,
        *,
        cache: Cache | None = None,
        callbacks: Sequence[Subscriber] | Subscriber | None = None,
        engines: object = None,
        resources: Mapping[str, object] | None = None,
        max_in_flight: int | None = None,
        retries: int = 3,
        cluster_options: Mapping[str, object] | None = None,
    ) -> None:
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
        ):
            msg = f"max_in_flight must be a positive int or None, got {max_in_flight!r}"
            raise TypeError(msg)
        if max_in_flight is not None and max_in_flight < 1:
            msg = f"max_in_flight must be a positive int or None, got {max_in_flight!r}"
            raise ValueError(msg)
        if retries < 0:
            msg = f"retries must be 0 or more, got {retries!r}"
            raise ValueError(msg)
        _check_cache(cache)
        super().__init__(cache=cache, callbacks=callbacks, engines=engines, resources=resources)
        self._inline = False  # the core never calls functions itself: they run on workers
        self._quiet.inline = False
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.cluster_options = dict(cluster_options or {})
        self._given = client
        self._client: Any = None
        self._cluster: Any = None
        self._lock = threading.Lock()
        self._finalizer: Callable[[], object] | None = None
        self._plugin = False

    # -- the cluster ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (connected, or the local cluster started, on first use)."""
        with self._lock:
            if self._client is None:
                self._connect()
            return self._client

    def _connect(self) -> None:
        distributed = _distributed()
        given = self._given
        if isinstance(given, distributed.Client):
            self._client = given
            return
        if isinstance(given, str):
            client = distributed.Client(given, set_as_default=False)
            cluster = None
        elif given is None:
            options = {
                "processes": True,
                "threads_per_worker": 1,
                "dashboard_address": ":0",  # any free port: never a clash with 8787
                "silence_logs": logging.ERROR,
                **self.cluster_options,
            }
            cluster = distributed.LocalCluster(**options)
            client = distributed.Client(cluster, set_as_default=False)
        else:
            msg = (
                "DaskRunner(client=...) takes a distributed.Client, a scheduler address or "
                f"None, got {type(given).__name__}"
            )
            raise TypeError(msg)
        self._client, self._cluster = client, cluster
        self._finalizer = weakref.finalize(self, _shutdown, client, cluster)

    @property
    def _in_flight(self) -> int:  # type: ignore[override]
        if self.max_in_flight is not None:
            return self.max_in_flight
        threads = int(sum(self.client.nthreads().values()))
        return 2 * max(1, threads)

    def close(self) -> None:
        """Close the client and the cluster this runner started (idempotent)."""
        with self._lock:
            finalizer, self._finalizer = self._finalizer, None
            self._client = self._cluster = None
            self._plugin = False
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "local cluster" if self._given is None else repr(self._given)
        return f"DaskRunner({where}, max_in_flight={self.max_in_flight})"

    # -- driving ------------------------------------------------------------------------
    _feeds_engines = False  # ``max_in_flight`` is the user's bound

    def _map_driver(self) -> SyncDriver:
        return self._driver()

    def _driver(self) -> SyncDriver:
        """A driver for one run or map (checked before anything runs)."""
        _check_cache(self.cache)
        client = self.client
        if self._settings.engines is not None and not self._plugin:
            from ._dask_plugin import EngineTeardown

            client.register_plugin(EngineTeardown(), name=EngineTeardown.name)
            self._plugin = True
        return DaskDriver(self)


def _check_cache(cache: Cache | None) -> None:
    if isinstance(cache, MemoryCache):
        msg = (
            "DaskRunner cannot share a MemoryCache with its worker processes; "
            "use DiskCache(path) (on a file system every worker can reach)"
        )
        raise TypeError(msg)


def _shutdown(client: Any, cluster: Any) -> None:
    """Close what the runner started: the client, then its local cluster."""
    if cluster is None and client is None:
        return
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()
