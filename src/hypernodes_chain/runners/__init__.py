"""Runners execute graphs; they share one core (`_flows`) and differ only in their driver."""

from .async_runner import AsyncRunner
from .daft_runner import DaftRunner
from .dask_runner import DaskRunner
from .graph_run import GraphRun
from .runner import Runner

__all__ = ["AsyncRunner", "DaftRunner", "DaskRunner", "GraphRun", "Runner"]
