"""Where node results are kept between runs: the `Cache` protocol and two stores.

A cache maps a key (a hex string from `hypernodes_chain.hashing`) to a value. Runners
look keys up in batches (`Cache.get_many`) and store results in batches
(`Cache.set_many`), so a store can answer a whole ``map`` batch in one round trip.

Degrade, don't crash: a value that cannot be pickled is not stored (one `CacheWarning`
per type), and an entry that cannot be read back is a miss. A broken cache costs
recomputation, never a failed run.

`DiskCache` frames every value it stores: a magic and version prefix, a blake2b digest of
the payload, then the pickled payload. Any damage to an entry (a truncated or garbled
value file, a garbled row) fails the digest on read, so a damaged entry is never returned
as a value: it is a miss, deleted, and recomputed by the runner, with one `CacheWarning`.
Entries in an older format (native str/int/float, bare pickles) read the same way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import threading
import time
import warnings
import weakref
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import diskcache
import diskcache.core

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
    framed bytes (magic and version, blake2b digest, payload), so a value that cannot be
    pickled is skipped with one `CacheWarning` per type, and an entry that is damaged
    (truncated, garbled, or in an older format) is a miss: it is deleted and recomputed,
    with one `CacheWarning` per look-up that met any. The store is opened
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

        The look-ups take one SQLite query per 500 keys. A damaged entry is a miss and is
        deleted (one `CacheWarning` per call says so). If the store itself cannot be read,
        every key is a miss and one `CacheWarning` says why.
        """
        if not keys:
            return []
        try:
            raw = self._fetch_many(self._open(), keys)
        except Exception as exc:
            self._warn_io("read", exc)
            return [MISS] * len(keys)
        out = [_decode(blob) for blob in raw]
        damaged = [key for key, value in zip(keys, out) if value is _DAMAGED]  # `is`: no __eq__
        if damaged:
            self._discard_damaged(set(damaged))
            out = [MISS if value is _DAMAGED else value for value in out]
        return out

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
        """The value for ``key``, or `MISS` (a damaged entry is deleted, with a warning)."""
        try:
            blob = self._open().get(key, default=_ABSENT, retry=True)
        except Exception as exc:
            self._warn_io("read", exc)
            return MISS
        value = _decode(blob)
        if value is _DAMAGED:
            self._discard_damaged({key})
            return MISS
        return value

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

    def _fetch_many(self, store: diskcache.Cache, keys: Sequence[str]) -> list[object]:
        """The stored blobs for ``keys`` (`_ABSENT` where absent), without decoding.

        One ``SELECT ... WHERE key IN (...)`` per chunk instead of one `diskcache.Cache.get`
        per key: the same rows and the same `diskcache.Disk.fetch`, a fraction of the cost.
        Takes the public path, key by key, whenever this store is not one it can read so
        (statistics on, an eviction policy that updates rows on reads, a custom ``Disk``).
        """
        try:
            plain = (
                type(store._disk) is diskcache.Disk
                and not store.statistics
                and diskcache.core.EVICTION_POLICY[store.eviction_policy]["get"] is None
            )
            sql, fetch = store._sql, store._disk.fetch
        except (AttributeError, KeyError, TypeError):  # another diskcache than 5.x
            plain = False
        if not plain:
            with store.transact(retry=True):
                return [store.get(key, default=_ABSENT, retry=True) for key in keys]
        now = time.time()
        found: dict[str, object] = {}
        unique = list(dict.fromkeys(keys)) if len(keys) > 1 else list(keys)
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            rows = sql(_select(len(chunk)), (*chunk, now)).fetchall()
            for key, mode, filename, value in rows:
                try:
                    found[key] = fetch(mode, filename, value, False)
                except OSError:
                    pass  # its file went away (deleted or evicted meanwhile): absent
        get = found.get
        return [get(key, _ABSENT) for key in keys]

    def _discard_damaged(self, keys: Collection[str]) -> None:
        """Delete damaged entries (best effort: they stay misses either way) and say so."""
        try:
            store = self._open()
            with store.transact(retry=True):
                for key in keys:
                    store.delete(key, retry=True)
        except Exception:
            pass
        what = (
            "A damaged cache entry (a truncated or garbled value, or an entry written by an "
            "older version) was found in {path!r}; it was deleted and will be recomputed."
            if len(keys) == 1
            else "Damaged cache entries (truncated or garbled values, or entries written by "
            "an older version) were found in {path!r}; they were deleted and will be recomputed."
        )
        warnings.warn(what.format(path=str(self.path)), CacheWarning, stacklevel=3)

    def _warn_io(self, action: str, exc: Exception) -> None:
        msg = f"Could not {action} the cache at {str(self.path)!r} ({exc!r}); going on without it."
        _warn_once(action, type(exc), msg)


def _close_quietly(store: diskcache.Cache) -> None:
    try:
        store.close()
    except Exception:
        pass  # closing at garbage collection is best effort


# --- the frame of a stored value: magic and version, blake2b digest, pickled payload -----

_MAGIC: Final = b"HNC\x01"
_DIGEST_SIZE: Final = 16
_HEAD: Final = len(_MAGIC) + _DIGEST_SIZE
_DAMAGED: Final = object()  # what _decode returns for an entry that is not a sound frame
_CHUNK: Final = 500  # keys per SELECT (SQLite takes at least 999 parameters)
_blake2b = hashlib.blake2b


@functools.cache
def _select(n: int) -> str:
    # str keys are stored as they are with raw = 1 (diskcache.Disk.put)
    return (
        "SELECT key, mode, filename, value FROM Cache WHERE key IN ({}) AND raw = 1"
        " AND (expire_time IS NULL OR expire_time > ?)".format(",".join("?" * n))
    )


def _encode(value: object) -> bytes | None:
    """The frame stored for a value, or None (and a warning) when it cannot be pickled."""
    payload = _dumps(value)
    if payload is None:
        return None
    return _MAGIC + _blake2b(payload, digest_size=_DIGEST_SIZE).digest() + payload


def _decode(blob: object) -> object:
    """The value in a stored frame; `MISS` for an absent entry or one this process cannot
    unpickle (a class it cannot import: unreadable here, not damaged); `_DAMAGED` for
    anything else that is not a sound frame."""
    if type(blob) is not bytes:
        return MISS if blob is _ABSENT else _DAMAGED  # older versions stored natives
    if blob[:4] != _MAGIC:
        return _DAMAGED
    payload = blob[_HEAD:] if len(blob) < 4096 else memoryview(blob)[_HEAD:]
    if _blake2b(payload, digest_size=_DIGEST_SIZE).digest() != blob[4:_HEAD]:
        return _DAMAGED
    try:
        return pickle.loads(payload)
    except (ImportError, AttributeError):
        return MISS
    except Exception:
        return _DAMAGED


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
