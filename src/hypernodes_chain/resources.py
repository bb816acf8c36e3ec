"""Resources: heavy objects (a tokenizer, an embedding model, a connection pool) that a node
asks for by name and the runner creates once per process.

```python
@node(output_name="ids")
def tokenize(text: str, tok=resource("tok")) -> list[int]:
    return tok.encode(text)

Runner(resources={"tok": load_tokenizer}).map(graph, inputs={"text": texts}, map_over="text")
```

A parameter whose default is ``resource(name)`` is not a graph input: the runner passes the
live resource. The runner's engine broker holds resources next to its engines: a factory (a
zero-argument callable) is called on first use, once per process (once per worker process
under Dask and Daft), and every node that asks for the name shares the result; a factory
that raises is called again on the next use. Resources do not count against ``max_live``
and are never evicted to make room for an engine. What the broker built it also releases
(``flush``, ``close``, interpreter exit): ``close()`` if the object has one, else
``__exit__``. An object registered as it is belongs to its caller and is never closed.

A resource's identity, not its state, enters the cache key of the nodes that use it
(`identity`): an object's ``__cache_key__()``; for a factory, its code (and closure
values); for an object without ``__cache_key__``, its type's qualified name.
"""

from __future__ import annotations

import functools
import pickle
import sys
import types
from dataclasses import dataclass
from typing import Any

from . import hashing

__all__ = ["Resource", "close_resource", "identity", "is_factory", "resource"]


@dataclass(frozen=True)
class Resource:
    """The default of a node parameter that receives the resource ``name``."""

    name: str

    def __repr__(self) -> str:
        return f"resource({self.name!r})"


def resource(name: str) -> Any:
    """Mark a node parameter as the resource registered under ``name``.

    Use it as the parameter's default: ``def tokenize(text: str, tok=resource("tok"))``.
    The parameter leaves the graph's inputs; every runner passes the live resource,
    created on first use from ``Runner(resources={"tok": factory_or_object})``.

    Parameters
    ----------
    name
        The name the resource is registered under in the runner's ``resources=``.

    Returns
    -------
    A marker (typed ``Any`` so that it fits the parameter's annotation).
    """
    if not isinstance(name, str) or not name:
        msg = f"resource() takes the name of a registered resource, got {name!r}"
        raise TypeError(msg)
    return Resource(name)


_FACTORIES = (type, functools.partial, types.BuiltinFunctionType)


def is_factory(source: object) -> bool:
    """Whether ``source`` builds the resource: a class, a function or lambda, a method, a
    ``functools.partial``. Any other object is the resource itself, a callable one too
    (a spaCy pipeline is called on text, not to build it)."""
    return isinstance(source, _FACTORIES) or (callable(source) and hasattr(source, "__code__"))


def identity(source: object) -> str | None:
    """What a resource contributes to the cache keys of the nodes that use it.

    An object's ``__cache_key__()`` if its class defines one; for a factory, its code
    (`hashing.code_fingerprint`, so editing the factory changes the keys) and the values
    it closes over; for any other object, its type's qualified name (its state is not
    read: a pool or a model is not a value). None when a part cannot be fingerprinted
    (the nodes that use it are then not cached).
    """
    if hasattr(type(source), "__cache_key__"):
        return hashing.fingerprint(source)
    if is_factory(source):
        parts = [hashing.code_fingerprint(source)]  # type: ignore[arg-type]
        for cell in getattr(source, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            part = (
                hashing.code_fingerprint(value) if callable(value) else hashing.fingerprint(value)
            )
            if part is None:  # a closure over a lock, say: no identity to give
                return None
            parts.append(part)
        return hashing.combine(*parts)
    kind = type(source)
    return hashing.fingerprint(f"resource of type {kind.__module__}.{kind.__qualname__}")


def close_resource(obj: object) -> None:
    """Release what a factory built: ``close()`` if it has one, else ``__exit__``."""
    close = getattr(obj, "close", None)
    if callable(close):
        close()
        return
    exit_ = getattr(type(obj), "__exit__", None)
    if callable(exit_):
        exit_(obj, None, None, None)


def pickling_error(obj: object) -> Exception | None:
    """Why ``obj`` cannot travel to worker processes (pickle, then cloudpickle where it is
    loaded, as where Dask pickles), or None when it can."""
    try:
        pickle.dumps(obj)
        return None
    except Exception as exc:
        error: Exception = exc
    cloudpickle = sys.modules.get("cloudpickle")  # loaded where Dask pickles: it does more
    if cloudpickle is not None:
        try:
            cloudpickle.dumps(obj)
            return None
        except Exception as exc:
            error = exc
    return error


def check_picklable(name: str, obj: object) -> None:
    """A resource object travels to worker processes only if it pickles; say which one
    does not, and what to do instead."""
    error = pickling_error(obj)
    if error is None:
        return
    msg = (
        f"resource {name!r} ({type(obj).__qualname__}) cannot be pickled to go to the worker "
        f"processes: {error}; register a factory (a zero-argument callable that builds it) "
        "so each process builds its own"
    )
    raise TypeError(msg) from error
