"""Where node results are kept between runs: the `Cache` protocol and two stores.

A cache maps a key (a hex string from `hypernodes_chain.hashing`) to a value. Runners
look keys up in batches (`Cache.get_many`) and store results in batches
(`Cache.set_many`), so a store can answer a whole ``map`` batch in one round trip.

Degrade, don't crash: a value that cannot be pickled is not stored (one `CacheWarning`
per type), and an entry that cannot be read back is a miss. A broken cache costs
recomputation, never a failed run.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import diskcache

from hypernodes_chain.exceptions import CacheWarning

__all__ = ["MISS", "Cache", "DiskCache", "MemoryCache"]


class _Miss:
    """The type of `MISS`: a single instance that survives pickling as itself."""

    __slots__ = ()
    _instance: _Miss | None = None

    def __new__(cls) -> _Miss:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<MISS>"

    def __reduce__(self) -> str:
        return "MISS"


MISS: Final = _Miss()
"""Returned for a key that is absent (or unreadable). A sentinel, not ``None``, because
``None`` is a legitimate cached value."""

_ABSENT = object()  # diskcache's default for an absent key, told apart from stored bytes


@runtime_checkable
class Cache(Protocol):
    """What runners need from a cache. Keys are strings; values are any objects."""

    def get_many(self, keys: Sequence[str]) -> list[object]:
        """The values for ``keys`` in order, with `MISS` where a key is absent or unreadable."""
        ...

    def set_many(self, items: Sequence[tuple[str, object]]) -> None:
        """Store ``(key, value)`` pairs; values that cannot be stored are skipped."""
        ...

    def get(self, key: str) -> object:
        """The value for ``key``, or `MISS`."""
        ...

    def set(self, key: str, value: object) -> None:
        """Store one value (or skip it, with a warning, when it cannot be stored)."""
        ...

    def clear(self) -> None:
        """Remove every entry."""
        ...


_warned: set[tuple[str, type]] = set()
_warned_lock = threading.Lock()


def _warn_once(kind: str, t: type, msg: str) -> None:
    with _warned_lock:
        if (kind, t) in _warned:
            return
        _warned.add((kind, t))
    warnings.warn(msg, CacheWarning, stacklevel=4)


class MemoryCache:
    """A cache in a dict of this process: fast, thread-safe, gone when the process ends.

    Values are kept as they are (not copied or pickled). A pickled `MemoryCache` (sent to
    a subprocess or a Dask worker) carries a copy of its entries; use `DiskCache` to share
    one cache between processes.
    """

    def __init__(self) -> None:
        self._data: dict[str, object] = {}
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[object]:
        """The values for ``keys`` in order, with `MISS` where a key is absent."""
        with self._lock:
            get = self._data.get
            return [get(key, MISS) for key in keys]

    def set_many(self, items: Sequence[tuple[str, object]]) -> None:
        """Store ``(key, value)`` pairs."""
        with self._lock:
            self._data.update(items)

    def get(self, key: str) -> object:
        """The value for ``key``, or `MISS`."""
        return self._data.get(key, MISS)

    def set(self, key: str, value: object) -> None:
        """Store one value."""
        with self._lock:
            self._data[key] = value

    def clear(self) -> None:
        """Remove every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"MemoryCache(<{len(self._data)} entries>)"

    def __getstate__(self) -> dict[str, object]:
        with self._lock:
            return dict(self._data)

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]
        self._data.update(state)


class DiskCache:
    """A cache in a folder on disk, shared safely by threads and processes.

    Built on `diskcache.Cache` (SQLite plus files). Values are pickled here and stored as
    bytes, so a value that cannot be pickled is skipped with one `CacheWarning` per type,
    and an entry that cannot be unpickled is a miss (and is deleted). The store is opened
    on first use; a `DiskCache` pickles as its path and settings and reopens on the other
    side, so it can travel to subprocesses and Dask workers.

    Parameters
    ----------
    path
        The folder; created if missing.
    **settings
        Passed to `diskcache.Cache`, for example ``size_limit`` (bytes, default 1 GiB,
        beyond which the oldest entries are evicted) or ``timeout`` (seconds, SQLite).
    """

    def __init__(self, path: str | os.PathLike[str] = ".hypernodes_cache", **settings: Any) -> None:
        self.path = Path(path)
        self.settings = settings
        self._store: diskcache.Cache | None = None
        self._open_lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[object]:
        """The values for ``keys`` in order, with `MISS` where a key is absent or unreadable.

        All look-ups run in one transaction. If the store itself cannot be read, every key
        is a miss and one `CacheWarning` says why.
        """
        try:
            store = self._open()
            with store.transact(retry=True):
                raw = [store.get(key, default=_ABSENT, retry=True) for key in keys]
        except Exception as exc:
            self._warn_io("read", exc)
            return [MISS] * len(keys)
        return [self._load(key, blob) for key, blob in zip(keys, raw)]

    def set_many(self, items: Sequence[tuple[str, object]]) -> None:
        """Store ``(key, value)`` pairs in one transaction, skipping unpicklable values."""
        blobs = [(key, blob) for key, value in items if (blob := _encode(value)) is not None]
        if not blobs:
            return
        try:
            store = self._open()
            with store.transact(retry=True):
                for key, blob in blobs:
                    store.set(key, blob, retry=True)
        except Exception as exc:
            self._warn_io("write", exc)

    def get(self, key: str) -> object:
        """The value for ``key``, or `MISS`."""
        try:
            blob = self._open().get(key, default=_ABSENT, retry=True)
        except Exception as exc:
            self._warn_io("read", exc)
            return MISS
        return self._load(key, blob)

    def set(self, key: str, value: object) -> None:
        """Store one value (skipped, with a warning, when it cannot be pickled)."""
        blob = _encode(value)
        if blob is None:
            return
        try:
            self._open().set(key, blob, retry=True)
        except Exception as exc:
            self._warn_io("write", exc)

    def clear(self) -> None:
        """Remove every entry."""
        self._open().clear(retry=True)

    def close(self) -> None:
        """Close the underlying store; the next use reopens it."""
        with self._open_lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def __len__(self) -> int:
        return len(self._open())

    def __enter__(self) -> DiskCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskCache(path={str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], **state["settings"])  # type: ignore[misc]

    def _open(self) -> diskcache.Cache:
        store = self._store
        if store is None:
            with self._open_lock:
                if self._store is None:
                    self._store = diskcache.Cache(os.fspath(self.path), **self.settings)
                    # a DiskCache dropped without close() still closes its SQLite
                    # connection (Python 3.13 warns about unclosed ones)
                    weakref.finalize(self, _close_quietly, self._store)
                store = self._store
        return store

    def _load(self, key: str, blob: object) -> object:
        if blob is _ABSENT:
            return MISS
        if type(blob) is not bytes:
            return blob  # stored natively by _encode
        try:
            return pickle.loads(blob)
        except (ImportError, AttributeError):
            return MISS  # a class this process cannot import: unreadable here, not corrupt
        except Exception:
            self._discard(key)
            return MISS

    def _discard(self, key: str) -> None:
        try:
            self._open().delete(key, retry=True)
        except Exception:
            pass  # best effort: it stays a miss either way

    def _warn_io(self, action: str, exc: Exception) -> None:
        msg = f"Could not {action} the cache at {str(self.path)!r} ({exc!r}); going on without it."
        _warn_once(action, type(exc), msg)


def _close_quietly(store: diskcache.Cache) -> None:
    try:
        store.close()
    except Exception:
        pass  # closing at garbage collection is best effort


def _encode(value: object) -> object:
    """What goes into diskcache: plain str, int and finite floats as they are (SQLite
    holds them natively, no pickling either way); everything else pickled to bytes."""
    t = type(value)
    if t is str or (t is int and -(2**63) <= value < 2**63):  # type: ignore[operator]
        return value
    if t is float and value == value:  # NaN would come back as NULL
        return value
    return _dumps(value)


def _dumps(value: object) -> bytes | None:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        t = type(value)
        msg = (
            f"Cannot pickle a value of type {t.__module__}.{t.__qualname__} ({exc}), so it "
            "is not stored in the cache. (Warned once per type.)"
        )
        _warn_once("pickle", t, msg)
        return None
