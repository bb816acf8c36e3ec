"""Loading the graph named by ``FILE.py:GRAPH``: import the file from its path and find the
`Graph` in it, or (``FILE.py`` alone) the Hamilton dataflow it defines.

Every failure is a `CliError` with a one-line message; a wrong graph name lists the file's graphs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._modules import import_file
from ..exceptions import CliError
from ._errors import one_line

__all__ = ["load_graph", "load_target", "parse_spec"]

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
    try:
        return import_file(path, _module_name(path), describe=one_line)
    except ImportError as exc:  # the file's own error, if it raised, is the cause
        raise CliError(str(exc)) from exc.__cause__


def _graphs_in(module: Any) -> list[str]:
    from ..graph import Graph

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
        from ..hamilton import is_dataflow, load_dataflow, parse_config
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
    from ..graph import Graph

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
