"""The nodes a Hamilton dataflow becomes: `HamiltonNode` (one resolved Hamilton node, calling
Hamilton's callable) and `ConfigNode` (a config value).

A node whose callable is the user's plain function with exactly the node's dependencies as
parameters calls it directly (the fast path of ``map``); any other callable is called by
keyword through a generated function with one positional parameter per dependency, as
Hamilton's executor calls it. The cache identity follows the user's original functions and
the parameters of the modifiers on them, never Hamilton's glue code.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import keyword
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..node import Node

__all__ = ["ConfigNode", "HamiltonNode", "NodeSpec"]


class _Missing:
    """The default of an optional parameter: the argument is left out of Hamilton's call,
    so Hamilton's callable applies its own default."""

    def __repr__(self) -> str:
        return "<not given>"

    def __reduce__(self) -> str:
        return "_MISSING"  # unpickles as this module's singleton


_MISSING = _Missing()


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """What a `HamiltonNode` keeps of one resolved Hamilton node (and pickles)."""

    name: str
    call: Callable[..., Any]  # Hamilton's callable, called with keyword arguments
    sources: tuple[str, ...]  # its dependencies: required ones first, then optional ones
    optional: frozenset[str]
    types: Mapping[str, Any]  # dependency -> annotated type, "return" -> output type
    role: str  # "STANDARD", "EXPAND" (Parallelizable) or "COLLECT"
    doc: str
    tags: Mapping[str, Any]
    originating: tuple[Callable[..., Any], ...]  # the user's functions it was made from


class HamiltonNode(Node[..., Any]):
    """One node of a Hamilton dataflow: calls Hamilton's callable for it.

    ``tags`` holds Hamilton's tags (``@tag``, the module, validator markers), ``__doc__``
    its documentation, ``hamilton_type`` its declared output type. The cache identity
    follows the user's original functions and the modifiers' parameters.
    """

    def __init__(self, spec: NodeSpec) -> None:
        func = _direct_function(spec) or _calling_function(spec)
        super().__init__(func, output_name=spec.name, name=spec.name)
        self.input_map = dict(zip(self.parameters, spec.sources))
        self.spec = spec
        self.tags: dict[str, Any] = dict(spec.tags)
        self.hamilton_type: Any = spec.types.get("return", Any)
        self.__doc__ = spec.doc or None
        types_ = {p: _plain_type(spec.types.get(s, Any)) for p, s in self.input_map.items()}
        self._hints = {**types_, "return": _plain_type(self.hamilton_type)}

    @property
    def hints(self) -> dict[str, Any]:
        return self._hints

    def fingerprint_parts(self) -> list[tuple[str, Any]]:
        """The user's functions (their code and helpers), the node's wiring in Hamilton,
        and the parameters of the modifiers on those functions."""
        spec = self.spec
        parts: list[tuple[str, Any]] = [("code", f) for f in spec.originating]
        wiring = ("hamilton", spec.name, spec.role, spec.sources, sorted(spec.optional))
        parts.append(("value", wiring))
        parts.append(("value", [_describe(vars(f)) for f in spec.originating]))
        return parts

    def __reduce__(self) -> tuple[Any, ...]:
        state = (self.name, self.outputs, dict(self.input_map))
        return (_restore_hamilton_node, (type(self), self.spec, *state))


def _restore_hamilton_node(
    cls: type[HamiltonNode],
    spec: NodeSpec,
    name: str,
    outputs: tuple[str, ...],
    input_map: dict[str, str],
) -> HamiltonNode:
    new = cls(spec)
    new.name, new.outputs, new.input_map = name, outputs, input_map  # as `rename` left them
    new.output_name = outputs[0]
    return new


class ConfigNode(Node[..., Any]):
    """A config value of a Hamilton dataflow, as a node with no inputs that returns it."""

    def __init__(self, name: str, value: Any) -> None:
        super().__init__(functools.partial(_identity, value), output_name=name, name=name)
        self.value = value

    def fingerprint_parts(self) -> list[tuple[str, Any]]:
        return [("value", ("hamilton config", self.outputs, self.value))]


def _identity(value: Any) -> Any:
    return value


def _direct_function(spec: NodeSpec) -> Callable[..., Any] | None:
    """Hamilton's callable itself when it is the user's plain function with exactly the
    node's dependencies as parameters: calling it by position is what Hamilton does."""
    call = spec.call
    if spec.role == "EXPAND" or not isinstance(call, types.FunctionType):
        return None
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        return None  # its value is the generator itself (our nodes would stream it)
    params = list(inspect.signature(call).parameters.values())
    if tuple(p.name for p in params) != spec.sources:
        return None
    for p in params:
        has_default = p.default is not inspect.Parameter.empty
        if p.kind is not p.POSITIONAL_OR_KEYWORD or has_default != (p.name in spec.optional):
            return None
    return call


def _calling_function(spec: NodeSpec) -> Callable[..., Any]:
    """A function with one parameter per dependency that calls Hamilton's callable by
    keyword, leaving out optional arguments that were not given. Generated, so that the
    runners call it by position at full speed; parameters are renamed where a dependency
    name is no Python name (``subdag.node``)."""
    params = _parameter_names(spec.sources)
    signature = ", ".join(
        f"{p}=__hn_missing" if s in spec.optional else p for p, s in zip(params, spec.sources)
    )
    required = ", ".join(
        f"{s!r}: {p}" for p, s in zip(params, spec.sources) if s not in spec.optional
    )
    lines = [f"    __hn_kw = {{{required}}}"]
    for p, s in zip(params, spec.sources):
        if s in spec.optional:
            lines.append(f"    if {p} is not __hn_missing: __hn_kw[{s!r}] = {p}")
    is_async = inspect.iscoroutinefunction(spec.call)
    call = "(await __hn_call(**__hn_kw))" if is_async else "__hn_call(**__hn_kw)"
    result = f"__hn_list({call})" if spec.role == "EXPAND" else call
    fname = _identifier(spec.name, "node")
    source = "\n".join(
        [f"{'async ' if is_async else ''}def {fname}({signature}):", *lines, f"    return {result}"]
    )
    namespace: dict[str, Any] = {
        "__name__": __name__,
        "__hn_call": spec.call,
        "__hn_missing": _MISSING,
        "__hn_list": list,
    }
    exec(compile(source, f"<hamilton node {spec.name}>", "exec"), namespace)
    func: Callable[..., Any] = namespace[fname]
    func.__doc__ = spec.doc or None
    return func


def _identifier(name: str, fallback: str) -> str:
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident):
        ident = f"{fallback}_{ident}"
    return ident


def _parameter_names(sources: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, s in enumerate(sources):
        usable = s.isidentifier() and not keyword.iskeyword(s) and not s.startswith("__hn")
        name = s if usable and s not in out else f"_arg{i}"
        out.append(name)
    return out


def _plain_type(tp: Any) -> Any:
    """``list[T]`` for ``Parallelizable[T]`` and ``Collect[T]``: what our nodes pass along."""
    htypes = sys.modules.get("hamilton.htypes")
    if htypes is not None:
        origin = getattr(tp, "__origin__", None)
        if origin is not None and origin in (htypes.Parallelizable, htypes.Collect):
            args = getattr(tp, "__args__", ())
            return list[args[0]] if args else list  # type: ignore[valid-type]
    return tp


def _describe(value: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A content summary of a modifier's parameters that our hashing always accepts:
    plain values and functions as they are, objects as their class and attributes. An
    object met again (or too deep) is only named, so linked structures stay small."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return value
    seen = set() if seen is None else seen
    if depth > 8 or id(value) in seen:
        return f"<{type(value).__qualname__}>"
    seen.add(id(value))
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, enum.Enum):
        return ("enum", type(value).__qualname__, value.name)
    if isinstance(value, functools.partial):
        parts = (value.func, value.args, value.keywords)
        return ("partial", *(_describe(p, depth + 1, seen) for p in parts))
    if isinstance(value, Mapping):
        return {_key(k): _describe(v, depth + 1, seen) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth + 1, seen) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_describe(v, depth + 1, seen) for v in value), key=repr)
    state = getattr(value, "__dict__", None)
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(state, dict):
        fields = {k: v for k, v in state.items() if not k.startswith("__")}
        return (name, _describe(fields, depth + 1, seen))
    text = repr(value)
    return (name, text if " at 0x" not in text else "")


def _key(key: Any) -> Any:
    return key if isinstance(key, (str, int, float, bool, type(None))) else repr(key)
