"""Whether a producer's annotated type can feed a consumer's annotated parameter.

Lenient by design: anything we cannot reason about (strings, TypeVars, protocols,
``Any``) is accepted, so that only a clear clash (``str`` into ``int``) is an error.
"""

from __future__ import annotations

import types
import typing
from typing import Any

_NUMERIC = {int: (float, complex), float: (complex,), bool: (int, float, complex)}
_UNION_TYPES: tuple[Any, ...] = (typing.Union, types.UnionType)


def element_type(annotation: Any) -> Any:
    """``T`` for ``list[T]`` (how a batch node sees one item), else ``Any``."""
    if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return Any


def _is_unknown(tp: Any) -> bool:
    return tp is Any or tp is None.__class__ or isinstance(tp, (str, typing.TypeVar))


def compatible(produced: Any, wanted: Any) -> bool:
    """True unless ``produced`` clearly cannot be passed where ``wanted`` is declared."""
    if _is_unknown(produced) or _is_unknown(wanted) or produced == wanted:
        return True
    p_origin, w_origin = typing.get_origin(produced), typing.get_origin(wanted)
    if w_origin in _UNION_TYPES:
        return any(compatible(produced, w) for w in typing.get_args(wanted))
    if p_origin in _UNION_TYPES:
        return all(compatible(p, wanted) for p in typing.get_args(produced))
    if p_origin is typing.Annotated or w_origin is typing.Annotated:
        return compatible(_strip_annotated(produced), _strip_annotated(wanted))
    if p_origin is typing.Literal or w_origin is typing.Literal:
        return True
    p_cls = p_origin or produced
    w_cls = w_origin or wanted
    if not (isinstance(p_cls, type) and isinstance(w_cls, type)):
        return True
    if getattr(w_cls, "_is_protocol", False):
        return True
    if not (issubclass(p_cls, w_cls) or w_cls in _NUMERIC.get(p_cls, ())):
        return False
    p_args, w_args = typing.get_args(produced), typing.get_args(wanted)
    if p_args and w_args and len(p_args) == len(w_args) and Ellipsis not in p_args + w_args:
        return all(compatible(p, w) for p, w in zip(p_args, w_args))
    return True


def _strip_annotated(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")
