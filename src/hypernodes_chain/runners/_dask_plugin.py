"""The Dask worker plugin of `DaskRunner` (imported only where distributed is installed)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from ._remote import close_brokers

__all__ = ["EngineTeardown"]


class EngineTeardown(WorkerPlugin):
    """Stops the engines a worker process started when the worker closes."""

    name = "hypernodes-chain-engines"
    idempotent = True

    def teardown(self, worker: object) -> None:
        close_brokers()
