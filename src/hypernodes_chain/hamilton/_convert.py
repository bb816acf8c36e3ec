"""Hamilton's resolver, run with telemetry off, and its nodes turned into a `Graph`, each
``Parallelizable`` block a nested graph mapped over the items."""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._modules import import_file
from .._optional import optional
from ..graph import Graph
from ..node import Node
from ._nodes import ConfigNode, HamiltonNode, NodeSpec, _identifier

__all__ = ["from_modules"]

_TELEMETRY_ENV = "HAMILTON_TELEMETRY_ENABLED"


def _hamilton(name: str = "hamilton") -> Any:
    return optional(name, "Hamilton interop", "hamilton")


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """Hamilton before 1.89 sent usage telemetry, switched by this variable, which its
    telemetry module reads when imported (1.89 removed telemetry). Converting modules must
    never send anything, so the variable says "false" while Hamilton is imported and runs."""
    before = os.environ.get(_TELEMETRY_ENV)
    os.environ[_TELEMETRY_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_TELEMETRY_ENV, None)
        else:
            os.environ[_TELEMETRY_ENV] = before


def from_modules(
    *modules: types.ModuleType | str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Graph:
    """A `Graph` of the Hamilton dataflow defined by ``modules``.

    Parameters
    ----------
    modules
        Modules of Hamilton functions (function name = output, parameters = dependencies;
        ``_private`` functions are skipped), resolved by Hamilton itself, or paths of
        ``.py`` files to import as such modules.
    config
        Hamilton's config: it chooses ``@config.when`` functions, and every key becomes a
        constant node of the graph (read by nodes, or requested as an output).
    name
        The graph's name (default: the modules' names).

    Returns
    -------
    A graph whose results equal Hamilton's ``driver.execute`` for the same inputs; its inputs
    are Hamilton's external nodes (optional where every reader has a default).

    Raises
    ------
    TypeError
        No module, or something that is neither a module nor a ``.py`` path.
    FileNotFoundError, ImportError
        A ``.py`` path that is no file, or whose import fails.
    ValueError
        Hamilton rejects the modules (its own message), or a ``Parallelizable`` block is
        never collected, or a node mixes values of two different blocks.
    """
    if not modules:
        msg = "from_modules needs at least one module of Hamilton functions"
        raise TypeError(msg)
    loaded = [_as_module(m) for m in modules]
    config = dict(config or {})
    with _telemetry_off():
        hgraph = _hamilton("hamilton.graph")
        _hamilton("hamilton.htypes")
        resolved: dict[str, Any] = hgraph.create_function_graph(*loaded, config=config)
    label = name or "+".join(m.__name__.rpartition(".")[2] for m in loaded)
    return _Converter(resolved, config).graph(label)


def _as_module(source: object) -> types.ModuleType:
    if isinstance(source, types.ModuleType):
        return source
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".py"):
        return import_dataflow_file(os.fspath(source))
    hint = ""
    if isinstance(source, str):
        hint = f"; for a module name, pass importlib.import_module({source!r})"
    msg = (
        f"from_modules takes modules or paths of .py files, got {type(source).__name__} "
        f"{source!r}{hint}"
    )
    raise TypeError(msg)


def import_dataflow_file(path: str) -> types.ModuleType:
    """The ``.py`` file at ``path`` imported under its stem (a private name when another
    module already has that name), its folder first on ``sys.path``."""
    file = Path(path)
    name = _identifier(file.stem, "dataflow")
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) != str(file.resolve()):
        name = f"_hypernodes_dataflow_{name}"
    return import_file(path, name)


class _Converter:
    """Hamilton nodes -> our nodes, with each ``Parallelizable`` block as a nested graph.

    A node's *level* is the chain of ``Parallelizable`` nodes whose items it runs for: a
    node takes the deepest level among its dependencies', a collector the level of its
    collected value minus the last block, and a Parallelizable node's items live one level
    below the node itself.
    """

    def __init__(self, resolved: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        self.computed = [n for n in resolved.values() if not n.user_defined]
        # every config key is a node, as in Hamilton (one that names a function replaces it)
        self.config_nodes = [
            ConfigNode(k, v)
            for k, v in config.items()
            if k not in resolved or resolved[k].user_defined
        ]
        self.level_of: dict[str, tuple[str, ...]] = {}  # value name -> its level
        self.node_level: dict[str, tuple[str, ...]] = {}
        for n in _topological(self.computed):
            self._place(n)

    def _place(self, n: Any) -> None:
        role = n.node_role.name
        levels = {d: self.level_of.get(d, ()) for d in n.input_types}
        if role == "COLLECT":
            collected = n.collect_dependency
            inner = levels.pop(collected)
            if not inner:
                msg = (
                    f"node {n.name!r} collects {collected!r} (Collect[...]), which is not "
                    f"produced inside a Parallelizable block"
                )
                raise ValueError(msg)
            level = inner[:-1]
        else:
            level = max(levels.values(), key=len, default=())
        for dep, dep_level in levels.items():
            if dep_level != level[: len(dep_level)]:
                msg = (
                    f"node {n.name!r} reads {dep!r} from the Parallelizable block of "
                    f"{dep_level[-1]!r} and other values from {' > '.join(level) or 'outside'}; "
                    f"collect {dep!r} first (a parameter typed Collect[...])"
                )
                raise ValueError(msg)
        self.node_level[n.name] = level
        self.level_of[n.name] = (*level, n.name) if role == "EXPAND" else level

    def graph(self, name: str) -> Graph:
        return Graph([*self.config_nodes, *self._nodes(())], name=name)

    def _nodes(self, level: tuple[str, ...]) -> list[Node[..., Any]]:
        here = [n for n in self.computed if self.node_level[n.name] == level]
        nodes: list[Node[..., Any]] = [HamiltonNode(_spec(n)) for n in here]
        for expander in (n for n in here if n.node_role.name == "EXPAND"):
            block = (*level, expander.name)
            collected = sorted(
                {
                    n.collect_dependency
                    for n in here
                    if n.node_role.name == "COLLECT"
                    and self.level_of.get(n.collect_dependency) == block
                }
                - {expander.name}  # items collected as they are need no inner graph
            )
            inner = self._nodes(block)
            if not inner:
                continue
            if not collected:
                msg = (
                    f"the Parallelizable block of {expander.name!r} is never collected: add a "
                    f"function with a Collect[...] parameter that reads one of its nodes "
                    f"({', '.join(n.name for n in inner)})"
                )
                raise ValueError(msg)
            graph = Graph(inner, name=expander.name)
            nodes.append(
                graph.as_node(
                    name=f"block-{expander.name}",
                    map_over=expander.name,
                    output_mapping={c: c for c in collected},
                )
            )
        return nodes


def _spec(n: Any) -> NodeSpec:
    deps = list(n.input_types.items())
    optional = frozenset(k for k, (_, dep) in deps if dep.name == "OPTIONAL")
    sources = tuple(
        [k for k, _ in deps if k not in optional] + [k for k, _ in deps if k in optional]
    )
    return NodeSpec(
        name=n.name,
        call=n.callable,
        sources=sources,
        optional=optional,
        types={**{k: t for k, (t, _) in deps}, "return": n.type},
        role=n.node_role.name,
        doc=n.documentation or "",
        tags=dict(n.tags),
        originating=tuple(n.originating_functions or ()),
    )


def _topological(nodes: Sequence[Any]) -> list[Any]:
    """Depth first, dependencies before dependents. An edge back into the path (a cycle) is
    skipped here: `Graph` reports the cycle by name."""
    by_name = {n.name: n for n in nodes}
    done: dict[str, None] = {}

    def visit(n: Any) -> None:
        stack = [(n, iter(n.input_types))]
        active = {n.name}
        while stack:
            current, deps = stack[-1]
            dep = next(
                (d for d in deps if d in by_name and d not in done and d not in active), None
            )
            if dep is None:
                stack.pop()
                active.discard(current.name)
                done.setdefault(current.name)
            else:
                active.add(dep)
                stack.append((by_name[dep], iter(by_name[dep].input_types)))

    for n in nodes:
        if n.name not in done:
            visit(n)
    return [by_name[name] for name in done]
