"""The engines of a run's LLM nodes: the file's top-level ``engines``, then each
``--engine NAME=SPEC`` over it (see `hypernodes_chain.engines.engine_from_spec`).

Every failure is a `CliError` with a one-line message, raised before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..exceptions import CliError
from ._errors import one_line

__all__ = ["graph_engines", "run_engines"]

_SPEC_EXAMPLES = "e.g. ollama:llama3.2, transformers:/models/tiny"


def graph_engines(graph: Any) -> dict[str, list[str]]:
    """The engine names the graph's LLM nodes use (nested graphs included), in order of first
    use, each with the names of the nodes that use it."""
    from ..llm import LLMNode

    used: dict[str, list[str]] = {}
    for n in graph.walk():
        if isinstance(n, LLMNode):
            used.setdefault(n.engine, []).append(n.name)
    return used


def _parse_engine_flags(flags: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """``--engine NAME=SPEC`` flags -> {name: (flag text, engine)}; each spec is parsed."""
    from ..engines.specs import engine_from_spec

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
    from ..engines.broker import EngineBroker

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
    from ..engines.broker import EngineBroker

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
