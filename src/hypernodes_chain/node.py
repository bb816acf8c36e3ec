"""`@node` and `Node`: a plain function plus the names it reads and writes.

This is the bottom layer: it imports nothing from the rest of the package but the
resource marker, so a graph can be defined without pulling in runners, caches or engines.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from .resources import Resource

__all__ = ["Node", "node"]

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["sync", "async", "gen", "agen", "graph"]
_EMPTY = inspect.Parameter.empty


def _kind_of(func: Callable[..., Any]) -> Kind:
    target = inspect.unwrap(func)
    if inspect.isasyncgenfunction(target):
        return "agen"
    if inspect.iscoroutinefunction(target):
        return "async"
    if inspect.isgeneratorfunction(target):
        return "gen"
    return "sync"


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(inspect.unwrap(func))
    except Exception:  # unresolvable forward references: treat as unannotated
        return {}


class Node(Generic[P, R]):
    """A function with named inputs (its parameters) and named outputs.

    Calling the node calls the plain function, so ``double(3) == 6`` still holds.
    """

    kind: Kind
    direct = True
    """Calling the function is the node's whole work (a plan may call it inline); a kind
    that does more with it (an LLM node sends its result to an engine) says False."""

    def __init__(
        self,
        func: Callable[P, R],
        *,
        output_name: str | tuple[str, ...] | None = None,
        name: str | None = None,
        cache: bool = True,
        batch: bool = False,
        timeout: float | None = None,
    ) -> None:
        if not callable(func):
            msg = f"@node needs a callable, got {func!r} ({type(func).__name__})"
            raise TypeError(msg)
        self.func = func
        self.name: str = name or str(getattr(func, "__name__", type(func).__name__))
        out = output_name if output_name is not None else self.name
        self.output_name: str | tuple[str, ...] = out
        self.outputs: tuple[str, ...] = (out,) if isinstance(out, str) else tuple(out)
        if not self.outputs or not all(isinstance(o, str) and o for o in self.outputs):
            msg = f"node {self.name!r}: output_name must be a str or a tuple of str, got {out!r}"
            raise TypeError(msg)
        self.cache = cache
        self.batch = batch
        self.kind = _kind_of(func)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                msg = f"node {self.name!r}: timeout must be a positive number of seconds"
                raise ValueError(msg)
            if self.kind not in ("async", "agen"):
                msg = (
                    f"node {self.name!r}: timeout= needs an async def node (a running sync "
                    f"function cannot be stopped); make it async, or time out inside it"
                )
                raise TypeError(msg)
        self.timeout: float | None = timeout
        if batch and self.kind in ("gen", "agen"):
            msg = f"batch node {self.name!r} cannot be a generator (batch nodes return a list)"
            raise TypeError(msg)
        sig = inspect.signature(func)
        # parameter name -> resource name: ``tok=resource("tok")``, passed by the runner
        self.resources: dict[str, str] = {
            p.name: p.default.name
            for p in sig.parameters.values()
            if isinstance(p.default, Resource)
        }
        if self.resources:
            self.direct = False  # the runner adds the live resources to each call
        self.parameters: tuple[str, ...] = tuple(
            p.name
            for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in self.resources
        )
        self.defaults: dict[str, Any] = {
            p.name: p.default
            for p in sig.parameters.values()
            if p.default is not _EMPTY and p.name not in self.resources
        }
        self.keyword_only = frozenset(
            p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY
        )
        # parameter name -> graph input name (changed by rename)
        self.input_map: dict[str, str] = {p: p for p in self.parameters}
        functools.update_wrapper(self, func)

    # -- what a graph needs ------------------------------------------------
    @property
    def inputs(self) -> tuple[str, ...]:
        """The graph-level names this node reads, in parameter order."""
        return tuple(self.input_map[p] for p in self.parameters)

    @property
    def optional(self) -> frozenset[str]:
        """Graph-level input names that have a default value."""
        return frozenset(self.input_map[p] for p in self.defaults)

    @functools.cached_property
    def hints(self) -> dict[str, Any]:
        return _type_hints(self.func)

    @functools.cached_property
    def item_params(self) -> frozenset[str]:
        """For a batch node: parameters that take one list per batch.

        In ``run`` these get a one-element list; a parameter annotated with a type
        that is not a list is a constant and gets its plain value.
        """
        out = set()
        for param in self.parameters:
            tp = self.hints.get(param, Any)
            origin = typing.get_origin(tp) or tp
            if tp is Any or (isinstance(origin, type) and issubclass(origin, (list, tuple))):
                out.add(param)
        return frozenset(out)

    def input_type(self, input_name: str) -> Any:
        """The annotation of the parameter bound to ``input_name`` (``Any`` if none)."""
        for param, mapped in self.input_map.items():
            if mapped == input_name:
                return self.hints.get(param, Any)
        return Any

    def output_type(self, output: str) -> Any:
        """The annotated type of one output (``Any`` if unknown)."""
        ret = self.hints.get("return", Any)
        if len(self.outputs) == 1:
            return ret
        if typing.get_origin(ret) is tuple:
            args = typing.get_args(ret)
            if len(args) == len(self.outputs) and Ellipsis not in args:
                return args[self.outputs.index(output)]
        return Any

    # -- copies ---------------------------------------------------------------
    def _copy(self) -> Node[P, R]:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("hints", None)
        new.__dict__.pop("item_params", None)
        new.input_map = dict(self.input_map)
        return new

    def rename(
        self,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> Node[P, R]:
        """A copy whose inputs and outputs are renamed (``{"old": "new"}``).

        Use it to put one function twice into a graph.
        """
        inputs = dict(inputs or {})
        outputs = dict(outputs or {})
        unknown_in = sorted(set(inputs) - set(self.inputs))
        unknown_out = sorted(set(outputs) - set(self.outputs))
        if unknown_in or unknown_out:
            msg = (
                f"node {self.name!r}: cannot rename "
                + ", ".join(
                    [f"unknown input {n!r}" for n in unknown_in]
                    + [f"unknown output {n!r}" for n in unknown_out]
                )
                + f"; inputs are {list(self.inputs)}, outputs are {list(self.outputs)}"
            )
            raise ValueError(msg)
        new = self._copy()
        new.input_map = {p: inputs.get(n, n) for p, n in self.input_map.items()}
        new.outputs = tuple(outputs.get(o, o) for o in self.outputs)
        new.output_name = new.outputs[0] if isinstance(self.output_name, str) else new.outputs
        if name is not None:
            new.name = name
        return new

    # -- pickling ---------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt through the constructor (then `rename`), so signature-derived fields and
        # the cached type hints are derived again on the other side
        func = _picklable_func(self.func)
        if type(self).__init__ is not Node.__init__:
            # a subclass with a constructor of its own: its fields as they are
            state = {k: v for k, v in self.__dict__.items() if k not in _NOT_PICKLED}
            wrapped = self.__dict__.get("__wrapped__") is self.func
            return (_restore_fields, (type(self), func, state, wrapped))
        init = {
            "output_name": self.output_name,
            "name": self.name,
            "cache": self.cache,
            "batch": self.batch,
            "timeout": self.timeout,
        }
        renamed = {p: n for p, n in self.input_map.items() if p != n}
        return (_restore_node, (type(self), func, init, renamed))

    # -- what makes its results what they are --------------------------------------
    def fingerprint_parts(self) -> list[tuple[str, Any]]:
        """The parts of this node's cache identity, for the runners to hash.

        Each is ``("code", function)`` (its source, and the user helpers it calls),
        ``("value", object)`` (hashed by content) or ``("node", inner_node)``. A node kind
        with more to it (an LLM node: engine, sampling, schema) extends the list.
        """
        func = self.func
        parts: list[tuple[str, Any]] = [("code", func), ("value", self.outputs)]
        for cell in getattr(func, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            parts.append(("code", value) if callable(value) else ("value", value))
        parts.append(("value", sorted(self.defaults.items())))
        return parts

    # -- behaving like the function ---------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        func: Callable[..., R] = self.func
        return functools.partial(func, obj)

    def __repr__(self) -> str:
        ins = ", ".join(self.inputs)
        outs = ", ".join(self.outputs)
        return f"<Node {self.name}({ins}) -> {outs}>"


class _FunctionOfNode:
    """Stands in for a function that pickle cannot name: ``@node`` rebinds its module-level
    name to the `Node`, so the function is reached as ``module.qualname.func`` instead."""

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def resolve(self) -> Callable[..., Any]:
        found = _lookup(importlib.import_module(self.module), self.qualname)
        if not isinstance(found, Node):
            msg = f"{self.module}.{self.qualname} is no longer a node, cannot unpickle its function"
            raise TypeError(msg)
        func: Callable[..., Any] = found.func
        return func


def _picklable_func(func: Callable[..., Any]) -> Callable[..., Any] | _FunctionOfNode:
    """``func``, or a reference to it when it is the function of a module-level ``@node``.

    The reference is used exactly where cloudpickle would pickle a plain function by
    reference (an importable module other than ``__main__``, not registered to travel by
    value); elsewhere the function is kept, which cloudpickle sends by value and pickle
    cannot send at all (``@node`` functions defined in ``__main__``).
    """
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<locals>" in qualname:
        return func
    if module == "__main__" or module not in sys.modules or _pickled_by_value(module):
        return func
    try:
        found = _lookup(sys.modules[module], qualname)
    except AttributeError:
        return func
    if isinstance(found, Node) and found.func is func:
        return _FunctionOfNode(module, qualname)
    return func


def _lookup(module: object, qualname: str) -> Any:
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _pickled_by_value(module: str) -> bool:
    """Whether cloudpickle was told to send ``module`` (or a package above it) by value."""
    cloudpickle = sys.modules.get("cloudpickle")
    registered = getattr(cloudpickle, "list_registry_pickle_by_value", None)
    if registered is None:
        return False
    return any(module == m or module.startswith(m + ".") for m in registered())


def _restore_node(
    cls: type[Node[..., Any]],
    func: Callable[..., Any] | _FunctionOfNode,
    init: dict[str, Any],
    renamed: dict[str, str],
) -> Node[..., Any]:
    if isinstance(func, _FunctionOfNode):
        func = func.resolve()
    new = cls(func, **init)
    # at construction each input is named after its parameter, so these keys are inputs
    return new.rename(inputs=renamed) if renamed else new


_NOT_PICKLED = frozenset({"func", "__wrapped__", "hints", "item_params"})
"""Fields `_restore_fields` sets from the function, or that are derived again on use."""


def _restore_fields(
    cls: type[Node[..., Any]],
    func: Callable[..., Any] | _FunctionOfNode,
    state: dict[str, Any],
    wrapped: bool,
) -> Node[..., Any]:
    if isinstance(func, _FunctionOfNode):
        func = func.resolve()
    new = cls.__new__(cls)
    new.__dict__.update(state)
    new.func = func
    if wrapped:
        new.__dict__["__wrapped__"] = func
    return new


@overload
def node(func: Callable[P, R], /) -> Node[P, R]: ...


@overload
def node(
    *,
    output_name: str | tuple[str, ...] | None = None,
    name: str | None = None,
    cache: bool = True,
    batch: bool = False,
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], Node[P, R]]: ...


def node(
    func: Callable[P, R] | None = None,
    /,
    *,
    output_name: str | tuple[str, ...] | None = None,
    name: str | None = None,
    cache: bool = True,
    batch: bool = False,
    timeout: float | None = None,
) -> Node[P, R] | Callable[[Callable[P, R]], Node[P, R]]:
    """Turn a function into a graph node.

    Its parameters are its inputs, except those whose default is ``resource(name)``: the
    runner passes them the live resource registered under ``name``.

    Parameters
    ----------
    output_name
        Name of the output (default: the function's name); a tuple names each element
        of the tuple the function returns.
    name
        The node's name in events and errors (default: the function's name).
    cache
        ``False`` never caches this node (for clocks, random draws, side effects).
    batch
        The function receives lists for the inputs that vary across items and plain
        values for constants, and returns a list of the same length. An `Exception`
        returned in an item's place fails that item only.
    timeout
        Seconds an ``async def`` node may run for one call; past it the call is cancelled
        and becomes that item's ``TimeoutError`` (under every runner).
    """

    def wrap(f: Callable[P, R]) -> Node[P, R]:
        return Node(
            f, output_name=output_name, name=name, cache=cache, batch=batch, timeout=timeout
        )

    return wrap(func) if func is not None else wrap
