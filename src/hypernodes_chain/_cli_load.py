"""Loading the graph named by ``FILE.py:GRAPH``: import the file from its path, find the `Graph`,
and the engines its LLM nodes use (the file's ``engines``, then ``--engine NAME=SPEC``).

Every failure is a `CliError` with a one-line message; a wrong graph name lists the file's graphs.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._cli_errors import CliError, one_line

__all__ = ["graph_engines", "load_graph", "load_target", "parse_spec", "run_engines"]

_SPEC_HINT = "expected FILE.py:GRAPH, e.g. pipeline.py:graph"
_MISSING = object()


def parse_spec(spec: str) -> tuple[Path, str]:
    """``"path/to/file.py:graph"`` -> (path, attribute name)."""
    file_part, sep, name = spec.rpartition(":")
    if not sep or not file_part:
        if spec.endswith(".py"):
            msg = f"bad graph spec {spec!r}: no graph name ({_SPEC_HINT})"
            try:
                msg += f"; {_graphs_hint(_import_file(Path(spec)), Path(spec))}"
            except CliError:
                pass
            raise CliError(msg)
        raise CliError(f"bad graph spec {spec!r}: {_SPEC_HINT}")
    if not name:
        raise CliError(f"bad graph spec {spec!r}: no graph name after ':' ({_SPEC_HINT})")
    if not all(part.isidentifier() for part in name.split(".")):
        raise CliError(f"bad graph spec {spec!r}: {name!r} is not a Python name ({_SPEC_HINT})")
    path = Path(file_part)
    if path.suffix != ".py":
        raise CliError(f"bad graph spec {spec!r}: {file_part!r} is not a .py file ({_SPEC_HINT})")
    return path, name


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem) or "graph_file"
    if stem[0].isdigit():
        stem = "_" + stem
    taken = stem in sys.modules or stem in getattr(sys, "stdlib_module_names", ())
    return f"_hypernodes_cli_{stem}" if taken else stem


def _import_file(path: Path) -> Any:
    """Import a ``.py`` file as a module named after it, its folder first on ``sys.path``."""
    if not path.exists():
        raise CliError(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise CliError(f"not a file: {str(path)!r}")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        # Stays for the whole process: nodes may import sibling modules lazily while running.
        sys.path.insert(0, folder)
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise CliError(
            f"importing {str(path)!r} failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    return module


def _graphs_in(module: Any) -> list[str]:
    from .graph import Graph

    return sorted(k for k, v in vars(module).items() if isinstance(v, Graph))


def _graphs_hint(module: Any, path: Path) -> str:
    names = _graphs_in(module)
    if not names:
        return f"{str(path)!r} defines no Graph at its top level"
    return f"graphs in {str(path)!r}: {', '.join(names)}"


def load_graph(spec: str, config: Sequence[str] = ()) -> Any:
    """The `Graph` named by ``FILE.py:GRAPH`` (raises `CliError` with a one-line message)."""
    return load_target(spec, config)[0]


def _dataflow(
    spec: str, config: Sequence[str], outputs: Sequence[str] | None
) -> tuple[Any, Any, Path] | None:
    """``FILE.py`` (no ``:GRAPH``) that defines no Graph: its Hamilton dataflow, if it is one."""
    path = Path(spec)
    if ":" in spec or path.suffix != ".py":
        return None
    module = _import_file(path)
    if _graphs_in(module):
        return None  # a file of graphs: parse_spec says which to name
    try:
        from .hamilton import is_dataflow, load_dataflow, parse_config
    except ImportError:
        return None
    try:
        if not is_dataflow(module):
            return None
    except ImportError:  # Hamilton is not installed
        raise CliError(
            f"{spec!r} defines no Graph; to run it as a Hamilton dataflow, "
            "pip install 'hypernodes-chain[hamilton]'"
        ) from None
    try:
        graph = load_dataflow(module, config=parse_config(config), outputs=outputs)
    except (ValueError, ImportError) as exc:
        raise CliError(f"Hamilton dataflow {spec!r}: {one_line(exc)}") from exc
    return graph, module, path


def load_target(
    spec: str, config: Sequence[str] = (), outputs: Sequence[str] | None = None
) -> tuple[Any, Any, Path]:
    """The `Graph` named by ``FILE.py:GRAPH`` (or the Hamilton dataflow of a ``FILE.py``
    that defines no Graph, with ``config`` items ``k=v``), its module, and the file."""
    from .graph import Graph

    found = _dataflow(spec, config, outputs)
    if found is not None:
        return found
    if config:
        raise CliError("--config is for Hamilton dataflows (a FILE.py that defines no Graph)")
    path, name = parse_spec(spec)
    module = _import_file(path)
    value: Any = module
    for part in name.split("."):
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            raise CliError(f"no graph {name!r} in {str(path)!r}; {_graphs_hint(module, path)}")
    if not isinstance(value, Graph):
        raise CliError(
            f"{name!r} in {str(path)!r} is a {type(value).__name__}, not a Graph; "
            f"{_graphs_hint(module, path)}"
        )
    return value, module, path


# --------------------------------------------------------------------------- engines
_SPEC_EXAMPLES = "e.g. ollama:llama3.2, transformers:/models/tiny"


def graph_engines(graph: Any) -> dict[str, list[str]]:
    """The engine names the graph's LLM nodes use (nested graphs included), in order of first
    use, each with the names of the nodes that use it."""
    from .llm import LLMNode

    used: dict[str, list[str]] = {}

    def walk(g: Any) -> None:
        for n in g.nodes:
            if isinstance(n, LLMNode):
                used.setdefault(n.engine, []).append(n.name)
            inner = getattr(n, "graph", None)
            if inner is not None and hasattr(inner, "nodes"):
                walk(inner)

    walk(graph)
    return used


def _parse_engine_flags(flags: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """``--engine NAME=SPEC`` flags -> {name: (flag text, engine)}; each spec is parsed."""
    from .engines.specs import engine_from_spec

    parsed: dict[str, tuple[str, Any]] = {}
    for flag in flags:
        name, eq, spec = flag.partition("=")
        name = name.strip()
        if not eq or not name or not spec.strip():
            raise CliError(f"--engine {flag!r}: expected NAME=SPEC ({_SPEC_EXAMPLES})")
        if name in parsed:
            raise CliError(f"--engine {flag!r}: engine {name!r} is given twice")
        try:
            engine = engine_from_spec(spec)
        except (ValueError, TypeError) as exc:
            raise CliError(f"--engine {flag!r}: {one_line(exc)}") from exc
        parsed[name] = (flag, engine)
    return parsed


def _module_engines(module: Any, path: Path) -> Any:
    """The file's top-level ``engines``: None, an `EngineBroker`, or a dict it is built from."""
    from .engines.broker import EngineBroker

    value = getattr(module, "engines", None)
    if value is None or isinstance(value, EngineBroker):
        return value
    if not isinstance(value, Mapping):
        raise CliError(
            f"'engines' in {str(path)!r} is a {type(value).__name__}; it must be an "
            f"EngineBroker or a dict of name -> engine (or zero-argument factory)"
        )
    try:
        return EngineBroker(dict(value))
    except (TypeError, ValueError) as exc:
        raise CliError(f"'engines' in {str(path)!r}: {one_line(exc)}") from exc


def run_engines(graph: Any, module: Any, path: Path, flags: Sequence[str]) -> Any:
    """The `EngineBroker` of a run (None when the graph uses no engine and none is given):
    the file's ``engines``, with each ``--engine NAME=SPEC`` registered over it.

    A flag naming an engine the graph does not use, and an engine the graph uses that
    neither gives, are `CliError` (nothing has started yet)."""
    from .engines.broker import EngineBroker

    used = graph_engines(graph)
    overrides = _parse_engine_flags(flags)
    for name, (flag, _) in overrides.items():
        if name not in used:
            uses = ", ".join(map(repr, used))
            what = f"its LLM nodes use {uses}" if used else "it has no LLM nodes"
            raise CliError(
                f"--engine {flag!r}: graph {graph.name!r} uses no engine {name!r}; {what}"
            )
    broker = _module_engines(module, path)
    if broker is None and (used or overrides):
        broker = EngineBroker()
    for name, (_, engine) in overrides.items():
        broker.register(name, engine)
    missing = [name for name in used if broker is None or name not in broker]
    if missing:
        name = missing[0]
        nodes = ", ".join(map(repr, used[name]))
        plural = "s" if len(used[name]) > 1 else ""
        raise CliError(
            f"graph {graph.name!r} needs engine {name!r} (llm node{plural} {nodes}), which "
            f"{str(path)!r} does not define in its 'engines': pass --engine {name}=SPEC "
            f"({_SPEC_EXAMPLES})"
        )
    return broker
