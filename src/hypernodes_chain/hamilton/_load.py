"""Loading a Hamilton dataflow for the command line: a file, a module name or a module, with
``k=v`` config items and the outputs to keep."""

from __future__ import annotations

import difflib
import importlib
import json
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._optional import optional
from ..graph import Graph
from ._convert import _telemetry_off, from_modules, import_dataflow_file

__all__ = ["is_dataflow", "load_dataflow", "parse_config"]


def load_dataflow(
    source: str | os.PathLike[str] | types.ModuleType,
    config: Mapping[str, Any] | None = None,
    outputs: str | Sequence[str] | None = None,
) -> Graph:
    """The graph of a Hamilton dataflow file or module, for the command line.

    Parameters
    ----------
    source
        A ``.py`` file (imported under its stem, its folder put first on ``sys.path`` so
        worker processes find it too), a dotted module name, or a module.
    config
        Hamilton's config (see `parse_config` for ``k=v`` strings).
    outputs
        Keep only the nodes these outputs need (default: the whole dataflow).

    Raises
    ------
    FileNotFoundError
        No such file.
    ImportError
        The file or module cannot be imported (chained to the error).
    ValueError
        The module defines no Hamilton function, an output is unknown, or Hamilton rejects
        the dataflow.
    """
    module = source if isinstance(source, types.ModuleType) else _import(source)
    if not is_dataflow(module):
        msg = f"module {module.__name__!r} defines no public function to make a Hamilton node of"
        raise ValueError(msg)
    graph = from_modules(module, config=config)
    return graph if outputs is None else _pruned(graph, outputs)


def is_dataflow(module: types.ModuleType) -> bool:
    """Whether Hamilton finds functions to make nodes of in ``module`` (public functions
    defined there)."""
    with _telemetry_off():
        graph_utils = optional("hamilton.graph_utils", "Hamilton interop", "hamilton")
        found = graph_utils.find_functions(module)
    return bool(found)


def parse_config(items: Iterable[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{"k": v}``; a value that reads as JSON (``3``, ``true``,
    ``[1, 2]``, ``"x"``) is that value, any other is the string itself."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            msg = f"config item {item!r}: expected KEY=VALUE, e.g. region=eu"
            raise ValueError(msg)
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _import(source: str | os.PathLike[str]) -> types.ModuleType:
    text = os.fspath(source)
    if not text.endswith(".py"):
        return importlib.import_module(text)
    return import_dataflow_file(text)


def _pruned(graph: Graph, outputs: str | Sequence[str]) -> Graph:
    wanted = [outputs] if isinstance(outputs, str) else list(outputs)
    for out in wanted:
        if graph.producer_of(out) is None:
            close = difflib.get_close_matches(out, graph.outputs, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown output {out!r}{hint}; the dataflow's outputs are {list(graph.outputs)}"
            raise ValueError(msg)
    keep: set[int] = set()
    stack = list(wanted)
    while stack:
        producer = graph.producer_of(stack.pop())
        if producer is not None and id(producer) not in keep:
            keep.add(id(producer))
            stack.extend(producer.inputs)
    return Graph([n for n in graph.nodes if id(n) in keep], name=graph.name)
