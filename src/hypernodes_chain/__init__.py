"""hypernodes_chain: pipelines of plain decorated functions.

A `Graph` is pure structure; runners execute it with caching, events and streaming
``map``. See the README for a tour.
"""

from .cache import DiskCache, MemoryCache
from .callbacks import Callback
from .events import (
    BatchFinished,
    Event,
    GraphFinished,
    GraphStarted,
    InterruptEvent,
    MapFinished,
    MapStarted,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    StreamingChunkEvent,
)
from .exceptions import (
    CacheWarning,
    CallbackError,
    CycleError,
    DuplicateOutputError,
    EngineError,
    EngineReplyError,
    GraphError,
    GraphTypeError,
    HypernodesError,
    InterruptError,
    LLMOutputError,
    MapInputError,
    MissingInputError,
    NodeError,
    PlanError,
    ResourceError,
    ResumeError,
    ResumeWarning,
    TruncatedReplyError,
    UnknownEngineError,
    UnknownInputError,
    UnknownResourceError,
    WriterLockedError,
)
from .graph import Graph, GraphNode
from .interrupts import ainterrupt, interrupt
from .jsonlog import JsonLogCallback
from .node import Node, node
from .progress import ProgressCallback
from .resources import resource
from .results import ItemFailure, MapResult
from .runners import AsyncRunner, DaftRunner, DaskRunner, GraphRun, Runner

__version__ = "0.1.0"

__all__ = [
    "AsyncRunner",
    "BatchFinished",
    "CacheWarning",
    "Callback",
    "CallbackError",
    "CycleError",
    "DaftRunner",
    "DaskRunner",
    "DiskCache",
    "DuplicateOutputError",
    "EngineError",
    "EngineReplyError",
    "Event",
    "Graph",
    "GraphError",
    "GraphFinished",
    "GraphNode",
    "GraphRun",
    "GraphStarted",
    "GraphTypeError",
    "HypernodesError",
    "InterruptError",
    "InterruptEvent",
    "ItemFailure",
    "JsonLogCallback",
    "LLMOutputError",
    "MapFinished",
    "MapInputError",
    "MapResult",
    "MapStarted",
    "MemoryCache",
    "MissingInputError",
    "Node",
    "NodeError",
    "NodeFailed",
    "NodeFinished",
    "NodeStarted",
    "PlanError",
    "ProgressCallback",
    "ResourceError",
    "ResumeError",
    "ResumeWarning",
    "Runner",
    "StreamingChunkEvent",
    "TruncatedReplyError",
    "UnknownEngineError",
    "UnknownInputError",
    "UnknownResourceError",
    "WriterLockedError",
    "__version__",
    "ainterrupt",
    "interrupt",
    "node",
    "resource",
]
