"""Runners execute graphs; they share one core (`_flows`) and differ only in their driver."""

from .async_runner import AsyncRunner
from .graph_run import GraphRun
from .runner import Runner

__all__ = ["AsyncRunner", "GraphRun", "Runner"]
