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
import json
import os
import pathlib
import struct
import sys
import sysconfig
import textwrap
import threading
import types
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from hypernodes_chain.exceptions import CacheWarning, _Unhashable

__all__ = ["code_fingerprint", "code_identity", "combine", "fingerprint", "refs_current"]

_MAX_DEPTH = 64
_blake2b = hashlib.blake2b
_pack_d = struct.Struct("<d").pack
_pack_dd = struct.Struct("<dd").pack

_Memo = dict[int, Any]  # id of a container -> (container, encoding), or _ACTIVE inside it
_Encoder = Callable[[Any, int, _Memo], bytes]  # (value, depth, memo) -> encoding
_ACTIVE = object()


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
    return _class_bytes(v)


_class_memo: weakref.WeakKeyDictionary[type, bytes] = weakref.WeakKeyDictionary()


def _class_bytes(cls: type) -> bytes:
    """A class by name, and a user class (a pydantic model, a dataclass) also by its
    definition: its source, and a model's JSON schema, so editing a field is a change."""
    memo = _class_memo.get(cls)
    if memo is not None:
        return memo
    out = b"y" + _str_bytes(_type_name(cls))
    module = sys.modules.get(cls.__module__)
    if module is not None and _is_user_module(module):
        try:
            out += _str_bytes(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            out += _str_bytes(" ".join(sorted(k for k in vars(cls) if not k.startswith("__"))))
        schema = getattr(cls, "model_json_schema", None)
        if callable(schema):
            try:
                out += _str_bytes(json.dumps(schema(), sort_keys=True, default=str))
            except Exception:
                pass  # a model whose schema cannot be built: its source still counts
    try:
        _class_memo[cls] = out
    except TypeError:
        pass
    return out


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


Ref = tuple[dict[str, Any], str, object]
"""A name a code fingerprint followed: (the namespace, the name, the object it held)."""

_code_memo: weakref.WeakKeyDictionary[Any, tuple[str, tuple[Ref, ...]]] = (
    weakref.WeakKeyDictionary()
)
_BUILTIN_CALLABLES = (types.BuiltinFunctionType, types.WrapperDescriptorType,
                      types.MethodWrapperType, types.MethodDescriptorType)  # fmt: skip


def code_fingerprint(func: Callable[..., Any]) -> str:
    """Hash of a function's code: its dedented source and its qualified name, and the code
    of the user functions it calls by name.

    Editing the body changes it; moving or re-indenting the function does not. Without
    source (a lambda typed into a REPL, ``exec``'d code) the bytecode, its constants and
    names are hashed instead; builtins hash as module and qualified name. Editing a helper
    the function calls (a global function, or ``module.function`` of a user module, up to
    4 calls deep) changes it too; functions of the standard library, of installed packages
    and of hypernodes_chain are not followed. Memoised per function object; the memo is
    dropped when a followed name is rebound (a helper redefined in a notebook).

    Parameters
    ----------
    func
        A function, lambda, method, builtin, ``functools.partial`` (function plus bound
        arguments) or callable object (its class's ``__call__`` plus its state).

    Returns
    -------
    A 32-character hex string.
    """
    return code_identity(func)[0]


def code_identity(func: Callable[..., Any]) -> tuple[str, tuple[Ref, ...]]:
    """`code_fingerprint` and the names it followed to reach helper functions.

    The fingerprint stays valid while `refs_current` holds for the refs (an empty tuple for
    a function that calls no user helper); a memo built on it must check that on each hit.
    """
    try:
        entry = _code_memo[func]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable or not hashable
        pass
    else:
        if not entry[1] or refs_current(entry[1]):
            return entry
    own = _code_bytes(func)
    root = _root_function(func)
    helpers, refs = _helpers(root) if root is not None else (b"", ())
    fp = _blake2b(own + helpers, digest_size=16).hexdigest()
    entry = (fp, refs)
    try:
        _code_memo[func] = entry
    except TypeError:
        pass
    return entry


def refs_current(refs: tuple[Ref, ...]) -> bool:
    """Whether every followed name still holds the object it held (see `code_identity`)."""
    for namespace, name, obj in refs:  # noqa: SIM110 (a loop beats all() on this hot path)
        if namespace.get(name, _NOTHING) is not obj:
            return False
    return True


# --- helpers a function calls by name -----------------------------------------------------

_HELPER_DEPTH = 4  # calls deep: node -> helper -> helper -> helper -> helper
_MODULE_DEPTH = 2  # pkg.mod.func
_NOTHING = object()
_LRU_WRAPPER = type(functools.lru_cache(maxsize=None)(lambda: None))
_own_memo: weakref.WeakKeyDictionary[types.FunctionType, bytes] = weakref.WeakKeyDictionary()
_user_paths: dict[str, bool] = {}
_PACKAGE = "hypernodes_chain"


def _root_function(func: Any) -> types.FunctionType | None:
    """The Python function whose code runs when ``func`` is called, if there is one."""
    for _ in range(8):
        if isinstance(func, types.FunctionType):
            return func
        if isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, types.MethodType):
            func = func.__func__
        elif isinstance(func, (type, *_BUILTIN_CALLABLES)):
            return None
        else:  # a callable object: its class's __call__
            call = next((k.__dict__["__call__"] for k in type(func).__mro__
                         if "__call__" in k.__dict__), None)  # fmt: skip
            return call if isinstance(call, types.FunctionType) else None
    return None


def _helpers(func: types.FunctionType) -> tuple[bytes, tuple[Ref, ...]]:
    """The code of the user functions ``func`` reaches by name (breadth first, at most
    `_HELPER_DEPTH` calls deep, each function once), and the names followed to them."""
    seen = {id(func)}
    found: set[bytes] = set()
    refs: dict[tuple[int, str], Ref] = {}
    frontier = [func]
    for _ in range(_HELPER_DEPTH):
        reached: list[types.FunctionType] = []
        for f in frontier:
            names = _global_names(f.__code__)
            if not names:
                continue
            for label, target in _follow(f.__globals__, names, "", _MODULE_DEPTH, refs):
                found.add(_str_bytes(label) + _own_digest(target))
                if id(target) not in seen:
                    seen.add(id(target))
                    reached.append(target)
        if not reached:
            break
        frontier = reached
    if not found:
        return b"", ()
    return b"H" + b"".join(sorted(found)), tuple(refs.values())


def _follow(
    namespace: dict[str, Any],
    names: tuple[str, ...],
    prefix: str,
    module_depth: int,
    refs: dict[tuple[int, str], Ref],
) -> list[tuple[str, types.FunctionType]]:
    """The user functions that ``names`` reach in ``namespace`` (a function's globals, or a
    user module's dict for ``module.name``), recording each name followed in ``refs``."""
    out: list[tuple[str, types.FunctionType]] = []
    get = namespace.get
    for name in names:
        obj = get(name, _NOTHING)
        if obj is _NOTHING:
            continue
        if isinstance(obj, types.ModuleType):
            if module_depth and _is_user_module(obj):
                inner = _follow(vars(obj), names, f"{prefix}{name}.", module_depth - 1, refs)
                if inner:
                    refs[id(namespace), name] = (namespace, name, obj)
                    out += inner
            continue
        targets = _user_functions(obj)
        if targets:
            refs[id(namespace), name] = (namespace, name, obj)
            out += [(prefix + name, t) for t in targets]
    return out


def _user_functions(obj: object) -> list[types.FunctionType]:
    """``obj`` if it is a user function, and the user functions it wraps (``__wrapped__``
    of ``functools.wraps`` decorators and of ``functools.cache``/``lru_cache``, the
    function of a ``@node`` called as a helper)."""
    out: list[types.FunctionType] = []
    for _ in range(4):
        t = type(obj)
        if t is types.FunctionType:
            if _is_user_function(obj):  # type: ignore[arg-type]
                out.append(obj)  # type: ignore[arg-type]
            obj = obj.__dict__.get("__wrapped__")
        elif t is _LRU_WRAPPER:
            obj = obj.__wrapped__  # type: ignore[attr-defined]
        elif t.__module__.startswith(_PACKAGE) and hasattr(obj, "__dict__"):
            obj = vars(obj).get("func")  # a Node: its function
        else:
            break
    return out


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names a code object (and the code nested in it: comprehensions, inner
    functions, lambdas) loads from its globals or as attributes."""
    names = code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return tuple(dict.fromkeys(names)) if len(names) > 1 else names


def _own_digest(func: types.FunctionType) -> bytes:
    try:
        return _own_memo[func]
    except KeyError:
        pass
    digest = _digest(_code_bytes(func))
    _own_memo[func] = digest
    return digest


def _is_user_function(func: types.FunctionType) -> bool:
    """Whether ``func`` is the user's code, by the file it was defined in (for code without
    a file: its module's file): not the standard library, not an installed package, not
    hypernodes_chain. ``__main__``, notebooks and files without a module file are."""
    module = func.__module__ or ""
    if module == _PACKAGE or module.startswith(_PACKAGE + "."):
        return False
    filename = func.__code__.co_filename
    if not filename.startswith("<"):
        return _is_user_path(filename)
    if filename.startswith("<frozen "):
        return False  # frozen standard library modules (os, posixpath, ...)
    if module == "__main__":
        return True  # a notebook cell, a REPL line, python -c
    path = vars(sys.modules[module]).get("__file__") if module in sys.modules else None
    return not isinstance(path, str) or _is_user_path(path)


def _is_user_module(module: types.ModuleType) -> bool:
    name = module.__name__
    if name == "__main__":
        return True
    if name == _PACKAGE or name.startswith(_PACKAGE + "."):
        return False
    path = vars(module).get("__file__")
    return isinstance(path, str) and _is_user_path(path)  # builtin modules have no file


def _is_user_path(path: str) -> bool:
    known = _user_paths.get(path)
    if known is None:
        full = os.path.normcase(os.path.realpath(path))
        parts = set(full.split(os.sep))
        known = _user_paths[path] = not (
            "site-packages" in parts
            or "dist-packages" in parts
            or any(full.startswith(root) for root in _library_roots())
        )
    return known


@functools.cache
def _library_roots() -> tuple[str, ...]:
    """Folders of code that is not the user's: this interpreter's standard library and
    package folders (of the environment and of its base installation), and this package."""
    roots = {os.path.dirname(os.path.abspath(__file__))}
    bases = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    for paths in (sysconfig.get_paths(), sysconfig.get_paths(vars=bases)):
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if key in paths:
                roots.add(paths[key])
    return tuple(
        os.path.join(os.path.normcase(os.path.realpath(root)), "") for root in sorted(roots)
    )


def _code_bytes(func: Any) -> bytes:
    if isinstance(func, functools.partial):
        bound = fingerprint((func.args, func.keywords))
        # Unhashable bound arguments: a token of this object, so no false hits elsewhere.
        return b"P" + _code_bytes(func.func) + _str_bytes(bound or uuid.uuid4().hex)
    if isinstance(func, types.MethodType):
        return b"W" + _code_bytes(func.__func__)
    if isinstance(func, type):
        return _class_bytes(func)
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
