"""Cache stores: round trips, misses, values that cannot be stored, and many processes."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import diskcache
import pytest

from hypernodes_chain import cache as cache_module
from hypernodes_chain.cache import MISS, Cache, DiskCache, MemoryCache
from hypernodes_chain.exceptions import CacheWarning

SRC = pathlib.Path(cache_module.__file__).resolve().parents[1]


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Cache:
    if request.param == "memory":
        return MemoryCache()
    return DiskCache(tmp_path / "cache")


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which types already warned, so each test sees its own first warning."""
    monkeypatch.setattr(cache_module, "_warned", set())


def run_python(code: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


# --- both stores ------------------------------------------------------------------------


def test_miss_is_a_unique_sentinel() -> None:
    assert repr(MISS) == "<MISS>"
    assert pickle.loads(pickle.dumps(MISS)) is MISS
    assert MISS is not None


def test_stores_follow_the_protocol(store: Cache) -> None:
    assert isinstance(store, Cache)


def test_get_and_set_round_trip(store: Cache) -> None:
    assert store.get("k") is MISS
    store.set("k", {"a": [1, 2.5], "b": None})
    assert store.get("k") == {"a": [1, 2.5], "b": None}
    store.set("none", None)
    assert store.get("none") is None  # None is a value, not a miss


def test_get_many_and_set_many_round_trip(store: Cache) -> None:
    store.set_many([("a", 1), ("b", "two"), ("c", (3,))])
    assert store.get_many(["c", "x", "a", "b"]) == [(3,), MISS, 1, "two"]
    assert store.get_many([]) == []
    store.set_many([("a", 10)])  # overwrite
    assert store.get("a") == 10


def test_clear_removes_everything(store: Cache) -> None:
    store.set_many([("a", 1), ("b", 2)])
    store.clear()
    assert store.get_many(["a", "b"]) == [MISS, MISS]


def test_memory_cache_keeps_values_as_they_are() -> None:
    mem = MemoryCache()
    value = threading.Lock()  # unpicklable is fine: nothing is pickled
    mem.set("lock", value)
    assert mem.get("lock") is value
    assert len(mem) == 1


def test_memory_cache_pickles_as_a_copy() -> None:
    mem = MemoryCache()
    mem.set("a", [1])
    twin = pickle.loads(pickle.dumps(mem))
    assert twin.get("a") == [1]
    twin.set("b", 2)
    assert mem.get("b") is MISS


def test_memory_cache_under_threads() -> None:
    mem = MemoryCache()

    def work(t: int) -> None:
        for i in range(200):
            mem.set_many([(f"{t}-{i}", i)])
            assert mem.get_many([f"{t}-{i}"]) == [i]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(mem) == 1600


# --- DiskCache: degrade, don't crash ----------------------------------------------------


def test_unpicklable_values_are_skipped_with_one_warning_per_type(
    tmp_path: pathlib.Path, fresh_warnings: None
) -> None:
    disk = DiskCache(tmp_path)
    items = [("a", 1), ("f", lambda: 0), ("lock", threading.Lock()), ("b", [2])]
    with pytest.warns(CacheWarning, match="not stored") as rec:
        disk.set_many(items)
    assert sorted(str(w.message).split(" (")[0] for w in rec) == [
        "Cannot pickle a value of type _thread.lock",
        "Cannot pickle a value of type builtins.function",
    ]
    assert disk.get_many(["a", "f", "lock", "b"]) == [1, MISS, MISS, [2]]
    with pytest.warns(CacheWarning, match="_thread.RLock"):
        disk.set("rlock", threading.RLock())
    assert disk.get("rlock") is MISS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        disk.set_many([("g", lambda: 1)])  # same type again: no second warning


def _damage_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


@pytest.mark.parametrize("garbage", [b"\x80\x05not a pickle", b"", b"text"])
def test_a_corrupt_entry_is_a_miss_and_is_removed(tmp_path: pathlib.Path, garbage: object) -> None:
    disk = DiskCache(tmp_path)
    disk.set_many([("bad", 1), ("good", 2)])
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set("bad", garbage)
    with pytest.warns(CacheWarning, match="damaged.*recomputed") as rec:
        assert disk.get_many(["bad", "good"]) == [MISS, 2]
    assert len(rec) == 1
    assert disk.get("bad") is MISS  # deleted: now simply absent, no second warning
    with diskcache.Cache(str(tmp_path)) as raw:
        assert "bad" not in raw


def _flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


@pytest.mark.parametrize("value", [{"a": [1, 2.5]}, "short text", 42, 1.5, b"raw", None])
@pytest.mark.parametrize("where", ["first", "middle", "last", "truncated"])
def test_a_small_entry_with_a_bad_frame_is_a_miss_with_one_warning(
    tmp_path: pathlib.Path, value: object, where: str
) -> None:
    """A value kept inside SQLite, damaged through diskcache's own API."""
    disk = DiskCache(tmp_path)
    disk.set("k", value)
    disk.set("other", [3])
    with diskcache.Cache(str(tmp_path)) as raw:
        blob = raw.get("k")
        assert type(blob) is bytes  # every value is framed, natives included
        damaged = {
            "first": lambda b: _flip(b, 0),
            "middle": lambda b: _flip(b, len(b) // 2),
            "last": lambda b: _flip(b, len(b) - 1),
            "truncated": lambda b: b[:-1],
        }[where](blob)
        raw.set("k", damaged)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert disk.get_many(["k", "other"]) == [MISS, [3]]
    assert len(_damage_warnings(record)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert disk.get("k") is MISS  # deleted on the first read
    disk.set("k", value)
    got = disk.get("k")
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "old", ["text", "x" * 40_000, 42, 1.5, pickle.dumps([1, 2]), pickle.dumps("t"), b"\x80"]
)
def test_entries_in_the_old_unframed_format_are_misses(tmp_path: pathlib.Path, old: object) -> None:
    """Native str/int/float and bare pickles, as earlier versions wrote them, never read as
    values: they are recomputed."""
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set("k", old)
    disk = DiskCache(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert disk.get("k") is MISS
    assert len(_damage_warnings(record)) == 1
    with diskcache.Cache(str(tmp_path)) as raw:
        assert "k" not in raw


def test_a_damaged_value_file_is_a_miss(tmp_path: pathlib.Path) -> None:
    disk = DiskCache(tmp_path)
    disk.set_many([("big", "y" * 50_000), ("small", 1)])
    (val,) = tmp_path.rglob("*.val")
    val.write_bytes(val.read_bytes()[:-10])
    with pytest.warns(CacheWarning, match="damaged") as rec:
        assert disk.get_many(["big", "small"]) == [MISS, 1]
    assert len(rec) == 1
    assert not list(tmp_path.rglob("*.val"))  # the damaged file went with its entry


def test_a_missing_value_file_is_a_miss(tmp_path: pathlib.Path) -> None:
    disk = DiskCache(tmp_path)
    disk.set("big", b"z" * 50_000)
    (val,) = tmp_path.rglob("*.val")
    val.unlink()
    assert disk.get_many(["big"]) == [MISS]
    assert disk.get("big") is MISS


def test_many_keys_in_one_get_many(tmp_path: pathlib.Path) -> None:
    """More keys than SQLite takes parameters in one statement."""
    disk = DiskCache(tmp_path)
    items = [(f"k{i}", i) for i in range(2500)]
    disk.set_many(items)
    keys = [f"k{i}" for i in range(0, 3000, 1)]
    got = disk.get_many(keys)
    assert got == [i if i < 2500 else MISS for i in range(3000)]
    assert disk.get_many(["k1", "k1", "nope", "k0"]) == [1, 1, MISS, 0]


@pytest.mark.parametrize(
    "value", ["text", "x" * 100_000, 42, -(2**63), 2**70, 1.5, float("inf"), True, b"raw", None]
)
def test_scalars_round_trip_with_their_exact_type(tmp_path: pathlib.Path, value: object) -> None:
    disk = DiskCache(tmp_path)
    disk.set("k", value)
    disk.set_many([("m", value)])
    for got in (disk.get("k"), *disk.get_many(["m"])):
        assert got == value and type(got) is type(value)


def test_nan_survives(tmp_path: pathlib.Path) -> None:
    disk = DiskCache(tmp_path)
    disk.set("nan", float("nan"))
    got = disk.get("nan")
    assert isinstance(got, float) and got != got


def test_an_unusable_folder_degrades_to_misses(
    tmp_path: pathlib.Path, fresh_warnings: None
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    disk = DiskCache(blocker)
    with pytest.warns(CacheWarning, match="Could not write"):
        disk.set_many([("a", 1)])
    with pytest.warns(CacheWarning, match="Could not read"):
        assert disk.get_many(["a"]) == [MISS]


# --- DiskCache: lifecycle ---------------------------------------------------------------


def test_disk_cache_opens_lazily_and_reprs_its_path(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "lazy"
    disk = DiskCache(folder)
    assert not folder.exists()
    assert repr(disk) == f"DiskCache(path={str(folder)!r})"
    disk.set("a", 1)
    assert folder.is_dir()


def test_disk_cache_pickles_as_path_and_settings(tmp_path: pathlib.Path) -> None:
    disk = DiskCache(tmp_path, size_limit=2**20)
    disk.set("a", [1, 2])
    twin = pickle.loads(pickle.dumps(disk))
    assert twin.path == disk.path and twin.settings == {"size_limit": 2**20}
    assert twin.get("a") == [1, 2]
    twin.set("b", 3)
    assert disk.get("b") == 3


def test_disk_cache_closes_and_reopens(tmp_path: pathlib.Path) -> None:
    with DiskCache(tmp_path) as disk:
        disk.set("a", 1)
    assert disk._store is None
    assert disk.get("a") == 1
    disk.close()


def test_disk_cache_under_threads(tmp_path: pathlib.Path) -> None:
    disk = DiskCache(tmp_path)

    def work(t: int) -> None:
        for batch in range(10):
            items = [(f"{t}-{batch}-{i}", (t, batch, i)) for i in range(20)]
            disk.set_many(items)
            assert disk.get_many([k for k, _ in items]) == [v for _, v in items]
        # diskcache keeps one SQLite connection per thread: a worker closes its own
        # (Python 3.13 warns about connections left to the garbage collector)
        disk._open().close()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    assert len(disk) == 6 * 10 * 20


# --- DiskCache: across processes --------------------------------------------------------

WRITER = """
import sys
from hypernodes_chain.cache import DiskCache
path, prefix = sys.argv[1], sys.argv[2]
cache = DiskCache(path)
for batch in range(10):
    cache.set_many([(f"{prefix}{batch}-{i}", {"p": prefix, "n": batch * 20 + i}) for i in range(20)])
"""
READER = """
import json, sys
from hypernodes_chain.cache import MISS, DiskCache
values = DiskCache(sys.argv[1]).get_many(sys.argv[2:])
print(json.dumps([None if v is MISS else v for v in values]))
"""


def test_a_subprocess_writes_and_the_parent_reads(tmp_path: pathlib.Path) -> None:
    code = WRITER.replace("sys.argv[1], sys.argv[2]", f"{str(tmp_path)!r}, 'child'")
    finish(run_python(code))
    disk = DiskCache(tmp_path)
    assert disk.get_many(["child0-0", "child9-19", "child10-0"]) == [
        {"p": "child", "n": 0},
        {"p": "child", "n": 199},
        MISS,
    ]


def test_the_parent_writes_and_a_subprocess_reads(tmp_path: pathlib.Path) -> None:
    DiskCache(tmp_path).set_many([("x", {"v": [1, 2]}), ("y", "why")])
    code = READER.replace("sys.argv[1]", repr(str(tmp_path))).replace(
        "sys.argv[2:]", repr(["y", "absent", "x"])
    )
    assert json.loads(finish(run_python(code))) == ["why", None, {"v": [1, 2]}]


def test_two_processes_write_concurrently(tmp_path: pathlib.Path) -> None:
    procs = [
        run_python(WRITER.replace("sys.argv[1], sys.argv[2]", f"{str(tmp_path)!r}, {p!r}"))
        for p in ("left", "right")
    ]
    for proc in procs:
        finish(proc)
    keys = [f"{p}{b}-{i}" for p in ("left", "right") for b in range(10) for i in range(20)]
    values = DiskCache(tmp_path).get_many(keys)
    assert MISS not in values
    assert [v["n"] for v in values] == list(range(200)) * 2  # type: ignore[index]


@pytest.mark.parametrize(
    "settings",
    [{"statistics": True}, {"eviction_policy": "least-recently-used"}, {}],
    ids=["statistics", "lru", "default"],
)
def test_get_many_reads_the_same_under_every_setting(
    tmp_path: pathlib.Path, settings: dict[str, object]
) -> None:
    disk = DiskCache(tmp_path, **settings)
    disk.set_many([("a", 1), ("big", "q" * 40_000), ("c", [3])])
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set("bad", b"HNC\x01garbage")
    with pytest.warns(CacheWarning, match="damaged") as rec:
        got = disk.get_many(["c", "bad", "a", "absent", "big"])
    assert got == [[3], MISS, 1, MISS, "q" * 40_000]
    assert len(rec) == 1


def test_an_expired_entry_is_a_miss(tmp_path: pathlib.Path) -> None:
    disk = DiskCache(tmp_path)
    disk.set("k", 1)
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.touch("k", expire=-1)
    assert disk.get_many(["k"]) == [MISS]


def test_values_with_an_odd_eq_come_back(tmp_path: pathlib.Path) -> None:
    """Looking for damaged entries compares by identity, never with a value's __eq__."""
    disk = DiskCache(tmp_path)
    disk.set_many([("a", Grumpy(1)), ("b", 2)])
    got = disk.get_many(["a", "b"])
    assert isinstance(got[0], Grumpy) and got[0].n == 1 and got[1] == 2


class Grumpy:
    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        raise ValueError("ambiguous")

    __hash__ = object.__hash__
