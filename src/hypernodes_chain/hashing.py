"""Content fingerprints of values and code, the raw material of cache keys.

Policy, which every change here must keep:

* A fingerprint depends only on content: never on ``hash()``, ``id()``, the order of a
  dict or set, or the process. The same value gives the same hex string everywhere.
* Every encoding is tagged with its type, so ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"``
  (and ``[1]`` and ``(1,)``) never share a fingerprint.
* An object's ``__cache_key__()`` wins; otherwise its public state counts (attributes
  starting with ``_`` are ignored).
* Degrade, don't crash: a value that cannot be fingerprinted gives ``None`` and one
  `CacheWarning` per type, and the caller simply does not cache it.

Each value is encoded to self-delimiting, type-tagged bytes; a nested container or object
contributes its tag plus the digest of its content, and the top level is hashed once with
blake2b. Containers of plain scalars take a faster ``repr`` encoding (marked ``!``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import fractions
import functools
import hashlib
import inspect
import io
import pathlib
import struct
import sys
import textwrap
import threading
import types
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from hypernodes_chain.exceptions import CacheWarning

__all__ = ["code_fingerprint", "combine", "fingerprint"]

_MAX_DEPTH = 64
_blake2b = hashlib.blake2b
_pack_d = struct.Struct("<d").pack
_pack_dd = struct.Struct("<dd").pack

_Memo = dict[int, Any]  # id of a container -> (container, encoding), or _ACTIVE inside it
_Encoder = Callable[[Any, int, _Memo], bytes]  # (value, depth, memo) -> encoding
_ACTIVE = object()


class _Unhashable(Exception):
    """Raised deep inside an encoding; `fingerprint` turns it into ``None`` and a warning."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(reason)
        self.type = type(value)
        self.reason = reason


def _digest(data: bytes) -> bytes:
    return _blake2b(data, digest_size=16).digest()


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _str_bytes(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return b"%d:%b" % (len(b), b)


# --- leaves: exact types, one dict look-up, no recursion ---------------------------------

_SCALARS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda v: b"N",
    bool: lambda v: b"T" if v else b"F",
    int: lambda v: b"i%x;" % v,
    float: lambda v: b"f" + _pack_d(v),
    complex: lambda v: b"c" + _pack_dd(v.real, v.imag),
    str: lambda v: b"s" + _str_bytes(v),
    bytes: lambda v: b"b%d:%b" % (len(v), v),
    bytearray: lambda v: b"B%d:%b" % (len(v), v),
    memoryview: lambda v: b"b%d:%b" % (v.nbytes, v.tobytes()),
    type(Ellipsis): lambda v: b"E",
    type(NotImplemented): lambda v: b"I",
    range: lambda v: b"r%x;%x;%x;" % (v.start, v.stop, v.step),
    _dt.datetime: lambda v: b"D" + _str_bytes(v.isoformat()),
    _dt.date: lambda v: b"d" + _str_bytes(v.isoformat()),
    _dt.time: lambda v: b"t" + _str_bytes(v.isoformat()),
    _dt.timedelta: lambda v: b"R%x;%x;%x;" % (v.days, v.seconds, v.microseconds),
    decimal.Decimal: lambda v: b"M" + _str_bytes(str(v)),
    fractions.Fraction: lambda v: b"Q%x;%x;" % (v.numerator, v.denominator),
    uuid.UUID: lambda v: b"U" + v.bytes,
    types.ModuleType: lambda v: b"m" + _str_bytes(v.__name__),
}
# Types whose repr is injective and unambiguous inside a list repr: the "!" fast path.
_SIMPLE = frozenset({str, int, float, bool, type(None)})


def _enc(v: Any, depth: int, memo: _Memo) -> bytes:
    """Self-delimiting, type-tagged encoding of ``v``."""
    t = type(v)
    if t is str:
        return b"s" + _str_bytes(v)
    if t is int:
        return b"i%x;" % v
    leaf = _SCALARS.get(t)
    if leaf is not None:
        return leaf(v)
    if depth >= _MAX_DEPTH:
        raise _Unhashable(v, f"it is nested deeper than {_MAX_DEPTH} levels")
    key = id(v)
    done = memo.get(key)
    if done is not None:
        if done is _ACTIVE:
            raise _Unhashable(v, "it contains itself")
        return done[1]  # type: ignore[no-any-return]
    memo[key] = _ACTIVE
    out = (_HANDLERS.get(t) or _resolve(t))(v, depth + 1, memo)
    memo[key] = (v, out)  # holding v keeps its id from being reused by a temporary
    return out


# --- containers: content functions, shared by the top level and nested encodings ---------


def _seq_content(v: Any, depth: int, memo: _Memo) -> bytes:
    for x in v:
        if type(x) not in _SIMPLE:
            break
    else:
        base = list if isinstance(v, list) else tuple
        try:
            return b"!" + base.__repr__(v).encode("utf-8", "surrogatepass")
        except ValueError:  # an int too long for repr: take the general path
            pass
    return b"".join([_enc(x, depth, memo) for x in v])


def _dict_content(v: Any, depth: int, memo: _Memo) -> bytes:
    for k, x in v.items():
        if type(k) is not str or type(x) not in _SIMPLE:
            break
    else:
        keys = sorted(v)
        try:
            simple = repr(keys) + repr([v[k] for k in keys])
            return b"!" + simple.encode("utf-8", "surrogatepass")
        except ValueError:
            pass
    parts = [_enc(k, depth, memo) + _enc(x, depth, memo) for k, x in v.items()]
    parts.sort()
    return b"".join(parts)


def _set_content(v: Any, depth: int, memo: _Memo) -> bytes:
    parts = [_enc(x, depth, memo) for x in v]
    parts.sort()
    return b"".join(parts)


_CONTAINERS: dict[type, tuple[bytes, _Encoder]] = {
    list: (b"[", _seq_content),
    tuple: (b"(", _seq_content),
    dict: (b"{", _dict_content),
    set: (b"<", _set_content),
    frozenset: (b">", _set_content),
}


def _container(tag: bytes, content: _Encoder) -> _Encoder:
    return lambda v, depth, memo: tag + _digest(content(v, depth, memo))


# --- objects ---------------------------------------------------------------------------


def _tagged(t: type, body: bytes) -> bytes:
    """An object's encoding: its class name, then the digest of its content."""
    return b"o" + _str_bytes(_type_name(t)) + _digest(body)


def _enc_cache_key(v: Any, depth: int, memo: _Memo) -> bytes:
    try:
        key = v.__cache_key__()
    except Exception as exc:
        raise _Unhashable(v, f"its __cache_key__() raised {exc!r}") from exc
    return b"K" + _str_bytes(_type_name(type(v))) + _enc(key, depth, memo)


def _enc_enum(v: Any, depth: int, memo: _Memo) -> bytes:
    name = v.name if v.name is not None else _enc(v.value, depth, memo)  # unnamed flag mixes
    return b"e" + _str_bytes(_type_name(type(v))) + _str_bytes(str(name))


def _enc_type(v: Any, depth: int, memo: _Memo) -> bytes:
    return b"y" + _str_bytes(_type_name(v))


def _enc_callable(v: Any, depth: int, memo: _Memo) -> bytes:
    module = _str_bytes(str(getattr(v, "__module__", None)))
    return b"F" + module + _str_bytes(code_fingerprint(v))


def _enc_method(v: Any, depth: int, memo: _Memo) -> bytes:
    return b"W" + _enc(v.__self__, depth, memo) + _enc_callable(v.__func__, depth, memo)


def _enc_dataclass(v: Any, depth: int, memo: _Memo) -> bytes:
    t: type = type(v)
    body = [_str_bytes(n) + _enc(getattr(v, n), depth, memo) for n in _fields(t)]
    return _tagged(t, b"".join(body))


def _enc_pydantic(v: Any, depth: int, memo: _Memo) -> bytes:
    return _tagged(type(v), _enc(v.model_dump(), depth, memo))


def _enc_object(v: Any, depth: int, memo: _Memo) -> bytes:
    t: type = type(v)
    state = getattr(v, "__dict__", None)
    slots = _slots(t)
    if state is None and not slots:
        raise _Unhashable(v, "it has no public state to hash")
    items = {k: x for k, x in (state or {}).items() if not k.startswith("_")}
    for name in slots:
        try:
            items[name] = getattr(v, name)
        except AttributeError:  # an unset slot
            pass
    body = [_str_bytes(k) + _enc(items[k], depth, memo) for k in sorted(items)]
    return _tagged(t, b"".join(body))


def _enc_never(v: Any, depth: int, memo: _Memo) -> bytes:
    raise _Unhashable(v, "it is a stream, generator or coroutine, not a value")


def _enc_path(v: Any, depth: int, memo: _Memo) -> bytes:
    return _tagged(type(v), _str_bytes(str(v)))


def _like(base: type, t: type) -> _Encoder:
    """A subclass of a builtin (namedtuple, OrderedDict, a datetime subclass...)."""
    if base in _CONTAINERS:
        content = _CONTAINERS[base][1]
        return lambda v, depth, memo: _tagged(t, content(v, depth, memo))
    leaf = _SCALARS[base]
    return lambda v, depth, memo: _tagged(t, leaf(v))


@functools.cache
def _fields(t: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(t) if not f.name.startswith("_"))


@functools.cache
def _slots(t: type) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for klass in t.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if not name.startswith("_"):
                names[name] = None
    return tuple(names)


# --- optional libraries: only looked at when the user has imported them ----------------


def _enc_numpy(v: Any, depth: int, memo: _Memo) -> bytes:
    head = b"A" + _str_bytes(f"{v.dtype.str}|{v.dtype}|{getattr(v, 'shape', ())}")
    if v.dtype.hasobject:
        return head + _enc(v.tolist(), depth, memo)
    return head + _digest(sys.modules["numpy"].ascontiguousarray(v).tobytes())


def _enc_pandas(v: Any, depth: int, memo: _Memo) -> bytes:
    pd = sys.modules["pandas"]
    frame = isinstance(v, pd.DataFrame)
    dtypes = list(v.dtypes) if frame else [v.dtype]
    index = v if isinstance(v, pd.Index) else v.index
    names = list(v.columns) if frame else v.name
    head = _enc([names, [str(d) for d in dtypes], list(v.shape)], depth, memo)
    if all(d.kind in "biufcmM" for d in [*dtypes, index.dtype]):
        rows = pd.util.hash_pandas_object(v, index=True).to_numpy().tobytes()
        return _tagged(type(v), head + b"h" + _digest(rows))
    # pandas hashes object cells (and strings, categories) through str(): 1 and "1" collide.
    columns = [v.iloc[:, i] for i in range(v.shape[1])] if frame else [v]
    cells = [index.tolist(), *(c.to_numpy(dtype=object).tolist() for c in columns)]
    return _tagged(type(v), head + b"v" + _enc(cells, depth, memo))


def _optional(t: type) -> _Encoder | None:
    np = sys.modules.get("numpy")
    if np is not None and issubclass(t, (np.ndarray, np.generic)):
        return _enc_numpy
    pd = sys.modules.get("pandas")
    if pd is not None and issubclass(t, (pd.DataFrame, pd.Series, pd.Index)):
        return _enc_pandas
    return None


_HANDLERS: dict[type, _Encoder] = {
    **{t: _container(tag, content) for t, (tag, content) in _CONTAINERS.items()},
    type: _enc_type,
    types.FunctionType: _enc_callable,
    types.BuiltinFunctionType: _enc_callable,
    types.MethodType: _enc_method,
    functools.partial: _enc_callable,
}
_NEVER = (io.IOBase, types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)
_DATES = (_dt.datetime, _dt.date, _dt.time, _dt.timedelta)  # datetime before date
_BUILTINS = (dict, list, tuple, set, frozenset, str, bytes, int, float, complex, *_DATES)


def _resolve(t: type) -> _Encoder:
    """Pick, once per type, how values of a type without an exact-type encoder are encoded."""
    handler: _Encoder
    if callable(getattr(t, "__cache_key__", None)):
        handler = _enc_cache_key
    elif optional := _optional(t):
        handler = optional
    elif issubclass(t, enum.Enum):
        handler = _enc_enum
    elif issubclass(t, type):
        handler = _enc_type
    elif issubclass(t, pathlib.PurePath):
        handler = _enc_path
    elif dataclasses.is_dataclass(t):
        handler = _enc_dataclass
    elif hasattr(t, "model_dump") and hasattr(t, "model_fields"):
        handler = _enc_pydantic
    elif issubclass(t, _NEVER):
        handler = _enc_never
    elif base := next((b for b in _BUILTINS if issubclass(t, b)), None):
        handler = _like(base, t)
    else:
        handler = _enc_object
    _HANDLERS[t] = handler
    return handler


# --- public API --------------------------------------------------------------------------

_warned: set[tuple[type, type]] = set()
_warned_lock = threading.Lock()


def _warn_unhashable(value: object, err: _Unhashable) -> None:
    key = (type(value), err.type)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    inner = "" if err.type is type(value) else f" (it holds a {_type_name(err.type)!r})"
    msg = (
        f"Cannot fingerprint a value of type {_type_name(type(value))!r}{inner}: "
        f"{err.reason}. The value is not cached. Define __cache_key__() on its type, "
        "returning a hashable summary, to cache it. (Warned once per type.)"
    )
    warnings.warn(msg, CacheWarning, stacklevel=3)


def fingerprint(value: object) -> str | None:
    """Content hash of a value, stable across processes and independent of dict/set order.

    Parameters
    ----------
    value
        Any value. An object's ``__cache_key__()`` is hashed in its place when defined;
        otherwise its class and public state (attributes not starting with ``_``) count.

    Returns
    -------
    A 32-character hex string, or ``None`` when the value cannot be fingerprinted (a lock,
    a generator, an open file, a self-referencing or too deeply nested container). Then a
    `CacheWarning` is emitted once per type, and the value should not be cached.
    """
    # Fast paths. A top-level message needs no length prefix: its tag says how to read it.
    if type(value) is str:
        return _blake2b(b"s" + value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    if type(value) is int:
        return _blake2b(b"i%x;" % value, digest_size=16).hexdigest()
    leaf = _SCALARS.get(type(value))
    if leaf is not None:
        return _blake2b(leaf(value), digest_size=16).hexdigest()
    try:
        container = _CONTAINERS.get(type(value))
        if container is None:
            return _blake2b(_enc(value, 0, {}), digest_size=16).hexdigest()
        tag, content = container  # top level: tag + content, hashed once
        data = tag + content(value, 1, {id(value): _ACTIVE})
        return _blake2b(data, digest_size=16).hexdigest()
    except _Unhashable as err:
        _warn_unhashable(value, err)
    except RecursionError:
        _warn_unhashable(value, _Unhashable(value, "it is nested too deeply"))
    except Exception as exc:
        _warn_unhashable(value, _Unhashable(value, f"hashing it raised {exc!r}"))
    return None


def combine(*parts: str) -> str:
    """Hash of an ordered sequence of fingerprints (chains cache keys along a graph).

    Parameters
    ----------
    parts
        Hex strings, as returned by `fingerprint`, `code_fingerprint` or `combine`.

    Returns
    -------
    A 32-character hex string that changes when any part, or their order, changes.
    """
    return _blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


_code_memo: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_BUILTIN_CALLABLES = (types.BuiltinFunctionType, types.WrapperDescriptorType,
                      types.MethodWrapperType, types.MethodDescriptorType)  # fmt: skip


def code_fingerprint(func: Callable[..., Any]) -> str:
    """Hash of a function's code: its dedented source and its qualified name.

    Editing the body changes it; moving or re-indenting the function does not. Without
    source (a lambda typed into a REPL, ``exec``'d code) the bytecode, its constants and
    names are hashed instead; builtins hash as module and qualified name. Memoised per
    function object.

    Parameters
    ----------
    func
        A function, lambda, method, builtin, ``functools.partial`` (function plus bound
        arguments) or callable object (its class's ``__call__`` plus its state).

    Returns
    -------
    A 32-character hex string.
    """
    try:
        return _code_memo[func]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable or not hashable
        pass
    fp = _blake2b(_code_bytes(func), digest_size=16).hexdigest()
    try:
        _code_memo[func] = fp
    except TypeError:
        pass
    return fp


def _code_bytes(func: Any) -> bytes:
    if isinstance(func, functools.partial):
        bound = fingerprint((func.args, func.keywords))
        # Unhashable bound arguments: a token of this object, so no false hits elsewhere.
        return b"P" + _code_bytes(func.func) + _str_bytes(bound or uuid.uuid4().hex)
    if isinstance(func, types.MethodType):
        return b"W" + _code_bytes(func.__func__)
    if isinstance(func, type):
        return b"y" + _str_bytes(_type_name(func))
    name = _str_bytes(getattr(func, "__qualname__", None) or type(func).__qualname__)
    if isinstance(func, types.FunctionType):
        code = _code_object_bytes(func.__code__)
        try:
            source = _str_bytes(textwrap.dedent(inspect.getsource(func)))
        except (OSError, TypeError):
            return b"C" + name + code
        # A lambda's "source" is its whole line, shared by every lambda on that line.
        return b"S" + name + source + (code if func.__name__ == "<lambda>" else b"")
    if isinstance(func, _BUILTIN_CALLABLES):
        return b"X" + _str_bytes(str(getattr(func, "__module__", None))) + name
    state = fingerprint(func)
    return b"O" + _code_bytes(type(func).__call__) + _str_bytes(state or uuid.uuid4().hex)


def _code_object_bytes(code: types.CodeType) -> bytes:
    consts = b"".join(
        _code_object_bytes(c) if isinstance(c, types.CodeType) else _enc(c, 0, {})
        for c in code.co_consts
    )
    names = _str_bytes(" ".join(code.co_names + code.co_varnames))
    return b"%d:%b" % (len(code.co_code), code.co_code) + _digest(consts) + names
