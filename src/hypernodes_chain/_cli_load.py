"""Loading the graph named by ``FILE.py:GRAPH``: import the file from its path, find the `Graph`.

Every failure is a `CliError` with a one-line message; a wrong graph name lists the file's graphs.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from ._cli_errors import CliError, one_line

__all__ = ["load_graph", "parse_spec"]

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


def load_graph(spec: str) -> Any:
    """The `Graph` named by ``FILE.py:GRAPH`` (raises `CliError` with a one-line message)."""
    from .graph import Graph

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
    return value
