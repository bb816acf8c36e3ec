"""Caching through Runner and AsyncRunner: hits, per-item map caching, invalidation,
degradation."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from hypernodes_chain import (
    CacheWarning,
    Callback,
    DiskCache,
    Graph,
    MemoryCache,
    NodeFinished,
    node,
)


def counting_graph():
    calls = {"a": 0, "b": 0}

    @node(output_name="a")
    def fa(x: int) -> int:
        calls["a"] += 1
        return x + 1

    @node(output_name="b")
    def fb(a: int) -> int:
        calls["b"] += 1
        return a * 2

    return Graph([fa, fb], name="counting"), calls


@pytest.fixture(params=["memory", "disk"])
def cache(request, tmp_path):
    if request.param == "memory":
        return MemoryCache()
    return DiskCache(tmp_path / "cache")


def test_second_run_is_served_from_cache(cache, make_runner):
    graph, calls = counting_graph()
    runner = make_runner(cache=cache)
    assert runner.run(graph, {"x": 1}) == {"a": 2, "b": 4}
    assert runner.run(graph, {"x": 1}) == {"a": 2, "b": 4}
    assert calls == {"a": 1, "b": 1}
    runner.run(graph, {"x": 2})
    assert calls == {"a": 2, "b": 2}


def test_map_caches_every_item_and_shares_keys_with_run(cache, make_runner):
    graph, calls = counting_graph()
    runner = make_runner(cache=cache)
    runner.run(graph, {"x": 3})
    out = runner.map(graph, {"x": [1, 2, 3]}, map_over="x")
    assert [r["b"] for r in out] == [4, 6, 8]
    assert calls == {"a": 3, "b": 3}  # x=3 came from the run's cache entries
    out = runner.map(graph, {"x": [2, 3, 4]}, map_over="x", batch_size=2)
    assert [r["b"] for r in out] == [6, 8, 10]
    assert calls == {"a": 4, "b": 4}
    assert runner.run(graph, {"x": 4}) == {"a": 5, "b": 10}
    assert calls == {"a": 4, "b": 4}


def test_cached_events(cache, make_runner):
    graph, _ = counting_graph()
    seen = []

    class Rec(Callback):
        def on_node_finished(self, event):
            seen.append(event)

    runner = make_runner(cache=cache, callbacks=[Rec()])
    runner.map(graph, {"x": [1, 2]}, map_over="x")
    runner.map(graph, {"x": [1, 2, 5]}, map_over="x")
    last = [e for e in seen if e.node == "fa"][-1]
    assert isinstance(last, NodeFinished)
    assert (last.n_items, last.n_cached, last.cached) == (3, 2, False)


def test_batch_node_receives_only_misses(cache, make_runner):
    received = []

    @node(output_name="emb", batch=True)
    def embed(text: list[str]) -> list[int]:
        received.append(list(text))
        return [len(t) for t in text]

    graph = Graph([embed])
    runner = make_runner(cache=cache)
    runner.map(graph, {"text": ["a", "bb"]}, map_over="text")
    out = runner.map(graph, {"text": ["a", "ccc", "bb", "dddd"]}, map_over="text")
    assert out == [{"emb": 1}, {"emb": 3}, {"emb": 2}, {"emb": 4}]
    assert received == [["a", "bb"], ["ccc", "dddd"]]


def test_cache_false_node_always_runs_but_consumers_still_cache(cache, make_runner):
    calls = {"now": 0, "use": 0}

    @node(cache=False)
    def now(x: int) -> int:
        calls["now"] += 1
        return x // 10  # same value for x in 0..9

    @node
    def use(now: int) -> int:
        calls["use"] += 1
        return now + 1

    runner = make_runner(cache=cache)
    graph = Graph([now, use])
    runner.run(graph, {"x": 1})
    runner.run(graph, {"x": 2})
    assert calls == {"now": 2, "use": 1}  # `use` saw the same value, so it hit


def _load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_editing_code_invalidates_node_and_downstream(tmp_path, make_runner):
    source = textwrap.dedent(
        """
        from hypernodes_chain import node
        CALLS = []

        @node(output_name="a")
        def fa(x: int) -> int:
            CALLS.append("fa")
            return x + {inc}

        @node(output_name="b")
        def fb(a: int) -> int:
            CALLS.append("fb")
            return a * 2

        @node(output_name="c")
        def fc(x: int) -> int:
            CALLS.append("fc")
            return x
        """
    )
    cache = DiskCache(tmp_path / "cache")
    results = []
    order = list if make_runner.serial else sorted  # AsyncRunner overlaps fa and fc
    for version, inc in enumerate([1, 1, 5]):
        path = tmp_path / f"mod_{version}.py"
        path.write_text(source.format(inc=inc))
        mod = _load_module(path, f"mod_{version}")
        graph = Graph([mod.fa, mod.fb, mod.fc])
        results.append((make_runner(cache=cache).run(graph, {"x": 1}), order(mod.CALLS)))
    assert results[0] == ({"a": 2, "c": 1, "b": 4}, order(["fa", "fc", "fb"]))
    assert results[1] == ({"a": 2, "c": 1, "b": 4}, [])  # same code: all cached
    assert results[2] == ({"a": 6, "c": 1, "b": 12}, ["fa", "fb"])  # fc untouched


def test_closure_values_are_part_of_the_key(make_runner):
    def make(k):
        @node(output_name="y")
        def scale(x: int) -> int:
            return x * k

        return Graph([scale])

    runner = make_runner(cache=MemoryCache())
    assert runner.run(make(2), {"x": 3}) == {"y": 6}
    assert runner.run(make(3), {"x": 3}) == {"y": 9}


def test_types_do_not_collide_in_keys(make_runner):
    @node
    def kind(x) -> str:
        return type(x).__name__

    runner = make_runner(cache=MemoryCache())
    graph = Graph([kind])
    assert [runner.run(graph, {"x": v})["kind"] for v in (1, 1.0, "1", True)] == [
        "int",
        "float",
        "str",
        "bool",
    ]


def test_unhashable_input_warns_and_is_not_cached(cache, make_runner):
    calls = []

    @node
    def use(lock: object, x: int) -> int:
        calls.append(x)
        return x

    runner = make_runner(cache=cache)
    graph = Graph([use])
    holder_type = type("LockHolder", (), {})  # a fresh type: warnings are once per type
    lock = holder_type()
    lock.lock = threading.Lock()
    with pytest.warns(CacheWarning, match="LockHolder.*not cached"):
        assert runner.run(graph, {"lock": lock, "x": 1}) == {"use": 1}
    assert runner.run(graph, {"lock": lock, "x": 1}) == {"use": 1}
    assert calls == [1, 1]


def test_unpicklable_result_warns_and_run_goes_on(tmp_path, make_runner):
    holder_type = type("RLockHolder", (), {})  # a fresh type: warnings are once per type

    @node
    def make_lock(x: int) -> object:
        holder = holder_type()
        holder.lock = threading.RLock()
        return holder

    @node
    def after(make_lock: object) -> str:
        return "ok"

    runner = make_runner(cache=DiskCache(tmp_path / "c"))
    with pytest.warns(CacheWarning, match="RLockHolder"):
        out = runner.run(Graph([make_lock, after]), {"x": 1})
    assert out["after"] == "ok"


def test_cache_key_protocol_and_private_attributes(make_runner):
    calls = []

    class Config:
        def __init__(self, name, secret):
            self.name = name
            self._secret = secret

    class Model:
        def __init__(self, tag, handle):
            self.tag = tag
            self.handle = handle

        def __cache_key__(self):
            return self.tag

    @node
    def use(cfg: Config, model: Model) -> str:
        calls.append(1)
        return cfg.name + model.tag

    runner = make_runner(cache=MemoryCache())
    graph = Graph([use])
    runner.run(graph, {"cfg": Config("a", 1), "model": Model("m", object())})
    runner.run(graph, {"cfg": Config("a", 2), "model": Model("m", object())})
    assert len(calls) == 1
    runner.run(graph, {"cfg": Config("b", 2), "model": Model("m", object())})
    assert len(calls) == 2


def test_corrupt_entry_is_a_miss(tmp_path, make_runner):
    graph, calls = counting_graph()
    cache = DiskCache(tmp_path / "c")
    make_runner(cache=cache).run(graph, {"x": 1})
    raw = cache._open()
    for key in list(raw.iterkeys()):
        raw[key] = b"\x80\x05garbage"
    with pytest.warns(CacheWarning, match="damaged"):
        assert make_runner(cache=cache).run(graph, {"x": 1}) == {"a": 2, "b": 4}
    assert calls == {"a": 2, "b": 2}


# what a job script calls its runner through: AsyncRunner's calls are awaited
SCRIPT_CALL = """
import asyncio, inspect
from hypernodes_chain import AsyncRunner, Runner


def call(result):
    return asyncio.run(result) if inspect.iscoroutine(result) else result
"""


def test_disk_cache_shared_by_two_processes(tmp_path, make_runner):
    script = tmp_path / "job.py"
    script.write_text(
        SCRIPT_CALL
        + textwrap.dedent(
            f"""
            import json, sys
            from hypernodes_chain import DiskCache, Graph, node

            CALLS = []

            @node
            def square(x: int) -> int:
                CALLS.append(x)
                return x * x

            xs = json.loads(sys.argv[1])
            runner = {make_runner.name}(cache=DiskCache({str(tmp_path / "shared")!r}))
            out = call(runner.map(Graph([square]), {{"x": xs}}, map_over="x"))
            print(json.dumps({{"out": [r["square"] for r in out], "computed": CALLS}}))
            """
        )
    )
    import json

    def run(xs):
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(xs)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout)

    order = list if make_runner.serial else sorted  # AsyncRunner may call items in any order
    first = run([1, 2, 3])
    second = run([2, 3, 4])
    assert {**first, "computed": order(first["computed"])} == {
        "out": [1, 4, 9],
        "computed": [1, 2, 3],
    }
    assert second == {"out": [4, 9, 16], "computed": [4]}


# --- damaged entries on disk: a miss, recomputed, with one warning ----------------------


def _cache_warnings(record):
    return [w for w in record if issubclass(w.category, CacheWarning)]


@pytest.mark.parametrize(
    "make_value",
    [
        lambda x: "s" * 40_000 + str(x),  # a str of 32 KiB or more: its own file
        lambda x: b"b" * 40_000 + bytes([x]),  # bytes, likewise
        lambda x: [f"item {i}" for i in range(5_000)] + [x],  # a big pickle
    ],
    ids=["str", "bytes", "pickle"],
)
@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_value_file_is_recomputed_with_one_warning(
    tmp_path, make_value, damage, make_runner
):
    calls = []

    @node(output_name="big")
    def make_big(x: int) -> object:
        calls.append(x)
        return make_value(x)

    folder = tmp_path / "c"
    graph = Graph([make_big])
    expected = {"big": make_value(7)}
    assert make_runner(cache=DiskCache(folder)).run(graph, {"x": 7}) == expected
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix == ".val"]
    assert len(files) == 1, files  # diskcache wrote the value to a file of its own
    data = files[0].read_bytes()
    if damage == "truncate":
        files[0].write_bytes(data[: len(data) // 2])
    else:  # same length, plausible bytes: only a checksum tells
        mid = len(data) // 2
        files[0].write_bytes(data[:mid] + b"zz" + data[mid + 2 :])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert make_runner(cache=DiskCache(folder)).run(graph, {"x": 7}) == expected
    assert calls == [7, 7]  # recomputed, not served damaged
    found = _cache_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    assert "damaged" in str(found[0].message) and "recomputed" in str(found[0].message)
    # the recomputed value was stored again, intact
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_runner(cache=DiskCache(folder)).run(graph, {"x": 7}) == expected
    assert calls == [7, 7]


def test_a_damaged_value_file_in_map_is_recomputed_with_one_warning(tmp_path, make_runner):
    calls = []

    @node(output_name="big")
    def make_big(x: int) -> str:
        calls.append(x)
        return "m" * 40_000 + str(x)

    folder = tmp_path / "c"
    graph = Graph([make_big])
    make_runner(cache=DiskCache(folder)).map(graph, {"x": [1, 2, 3]}, map_over="x")
    files = sorted(p for p in folder.rglob("*.val"))
    assert len(files) == 3
    files[1].write_bytes(files[1].read_bytes()[:100])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = make_runner(cache=DiskCache(folder)).map(graph, {"x": [1, 2, 3]}, map_over="x")
    assert [r["big"] for r in out] == ["m" * 40_000 + str(x) for x in (1, 2, 3)]
    assert len(calls) == 4
    assert len(_cache_warnings(record)) == 1


# --- editing a helper a node calls invalidates the node ---------------------------------

HELPER_PIPELINE = """
from hypernodes_chain import node

CALLS = []


def helper(x):
    return x * {factor}


@node(output_name="g4")
def g4(x: int) -> int:
    CALLS.append(x)
    return helper(x)


@node(output_name="plus")
def plus(g4: int) -> int:
    return g4 + 1
"""


def test_editing_a_helper_in_its_file_invalidates_the_node(tmp_path, make_runner):
    """The file is edited between two runs of a script (fresh processes)."""
    pipeline = tmp_path / "helper_pipeline.py"
    script = tmp_path / "job.py"
    script.write_text(
        SCRIPT_CALL
        + textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(tmp_path)!r})
            from hypernodes_chain import DiskCache, Graph
            import helper_pipeline as p

            runner = {make_runner.name}(cache=DiskCache({str(tmp_path / "cache")!r}))
            out = call(runner.run(Graph([p.g4, p.plus]), {{"x": 1}}))
            print(json.dumps({{"out": out, "computed": p.CALLS}}))
            """
        )
    )
    import json

    def run(factor):
        pipeline.write_text(HELPER_PIPELINE.format(factor=factor))
        env = {**__import__("os").environ, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=True, env=env
        )
        return json.loads(done.stdout)

    assert run(10) == {"out": {"g4": 10, "plus": 11}, "computed": [1]}
    assert run(10) == {"out": {"g4": 10, "plus": 11}, "computed": []}  # cached
    assert run(20) == {"out": {"g4": 20, "plus": 21}, "computed": [1]}  # recomputed


def test_editing_a_helper_invalidates_the_node_under_a_fresh_module_name(tmp_path, make_runner):
    cache = DiskCache(tmp_path / "cache")
    results = []
    for version, factor in enumerate([10, 10, 20]):
        path = tmp_path / f"helper_mod_{version}.py"
        path.write_text(HELPER_PIPELINE.format(factor=factor))
        mod = _load_module(path, f"helper_mod_{version}")
        out = make_runner(cache=cache).run(Graph([mod.g4, mod.plus]), {"x": 1})
        results.append((out, list(mod.CALLS)))
    assert results == [
        ({"g4": 10, "plus": 11}, [1]),
        ({"g4": 10, "plus": 11}, []),
        ({"g4": 20, "plus": 21}, [1]),
    ]


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_redefining_a_helper_in_the_same_process_invalidates_the_node(tmp_path, kind, make_runner):
    """A notebook: the cell defining `helper` runs again; the node object stays the same."""
    path = tmp_path / "notebook_like.py"
    path.write_text(HELPER_PIPELINE.format(factor=10))
    mod = _load_module(path, "notebook_like")
    cache = MemoryCache() if kind == "memory" else DiskCache(tmp_path / "cache")
    runner = make_runner(cache=cache)
    graph = Graph([mod.g4, mod.plus])
    nested = Graph([Graph([mod.g4], name="inner").as_node(name="sub"), mod.plus])
    assert runner.run(graph, {"x": 1}) == {"g4": 10, "plus": 11}
    assert runner.run(nested, {"x": 1}) == {"g4": 10, "plus": 11}
    assert runner.map(graph, {"x": [1, 2]}, map_over="x")[1] == {"g4": 20, "plus": 21}
    assert mod.CALLS == [1, 2]
    exec("def helper(x):\n    return x * 20\n", vars(mod))
    assert runner.run(graph, {"x": 1}) == {"g4": 20, "plus": 21}
    assert runner.run(nested, {"x": 1}) == {"g4": 20, "plus": 21}
    assert runner.map(graph, {"x": [1, 2]}, map_over="x")[1] == {"g4": 40, "plus": 41}
    assert mod.CALLS == [1, 2, 1, 2]
    assert runner.run(graph, {"x": 1}) == {"g4": 20, "plus": 21}  # and cached again
    assert mod.CALLS == [1, 2, 1, 2]
