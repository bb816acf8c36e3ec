"""Runners execute graphs; they share one core (`_flows`, `_lifecycle`, `_map`) and differ
only in their driver (`_drive`)."""

from .async_runner import AsyncRunner
from .daft_runner import DaftRunner
from .dask_runner import DaskRunner
from .graph_run import GraphRun
from .runner import Runner

__all__ = ["AsyncRunner", "DaftRunner", "DaskRunner", "GraphRun", "Runner"]
