"""Resources: heavy objects a node asks for with ``resource(name)``, built once per process
by the runner's broker, shared by the nodes, released by the broker's rules, and entering
cache keys by identity. Each stand-in resource leaves a file per build, named for its
process, so builds are counted the same way in this process and in worker processes."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pickle
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hypernodes_chain import (
    AsyncRunner,
    DiskCache,
    Graph,
    NodeError,
    ResourceError,
    Runner,
    UnknownResourceError,
    node,
    resource,
)
from hypernodes_chain.engines import EngineBroker
from support.scripted_engine import ScriptedEngine

cloudpickle = pytest.importorskip("cloudpickle")
# Dask workers and Daft's UDF processes get this module's functions and classes by value,
# as a notebook's: they cannot read their source there
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Tokenizer:
    """A stand-in for a heavy object: building one leaves ``built-<pid>-<id>`` in ``folder``,
    closing it ``closed-<pid>-<id>``."""

    def __init__(self, folder: str, scale: int = 1) -> None:
        self.folder = folder
        self.scale = scale
        self.id = uuid.uuid4().hex
        Path(folder, f"built-{os.getpid()}-{self.id}").touch()

    def encode(self, text: str) -> list[int]:
        return [ord(c) * self.scale for c in text]

    def close(self) -> None:
        Path(self.folder, f"closed-{os.getpid()}-{self.id}").touch()


class Pool:
    """A resource that releases with ``__exit__`` (a context manager, no ``close``)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        Path(self.folder, "pool-exited").touch()


def builds(folder: Path) -> Counter[int]:
    """Builds per process id."""
    return Counter(int(p.name.split("-")[1]) for p in folder.glob("built-*"))


def closes(folder: Path) -> int:
    return len(list(folder.glob("closed-*")))


def record(path: Path, value: Any) -> None:
    with open(path, "a") as f:
        f.write(f"{value}\n")


def called(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@node(output_name="ids")
def tokenize(text: str, tok: Any = resource("tok")) -> list[int]:
    return tok.encode(text)


@node(output_name="n")
def count(ids: list[int], tok: Any = resource("tok")) -> int:
    return len(ids) if tok is not None else -1


@node(output_name="tok_id")
def tok_id(ids: list[int], tok: Any = resource("tok")) -> str:
    return tok.id


GRAPH = Graph([tokenize, count], name="tokens")


# -- the marker ------------------------------------------------------------------------------


def test_a_resource_parameter_is_not_a_graph_input(tmp_path: Path) -> None:
    assert (GRAPH.inputs, GRAPH.optional_inputs) == (("text",), ())
    assert tokenize.resources == {"tok": "tok"} and tokenize.inputs == ("text",)
    assert tokenize("ab", tok=Tokenizer(str(tmp_path))) == [97, 98]  # still the function


def test_resource_takes_a_name() -> None:
    with pytest.raises(TypeError, match=r"resource\(\) takes the name .* got 3"):
        resource(3)  # type: ignore[arg-type]


# -- Runner, AsyncRunner -----------------------------------------------------------------------


@pytest.mark.parametrize("max_workers", [None, 4])
def test_runner_builds_once_and_shares_it_between_nodes_and_items(
    tmp_path: Path, max_workers: int | None
) -> None:
    runner = Runner(resources={"tok": functools.partial(Tokenizer, str(tmp_path))},
                    max_workers=max_workers)  # fmt: skip
    graph = Graph([tokenize, count, tok_id])
    assert runner.run(graph, {"text": "hi"})["ids"] == [104, 105]
    out = runner.map(graph, {"text": ["a", "bb", "ccc"] * 100}, map_over="text", batch_size=7)
    assert [row["n"] for row in out[:3]] == [1, 2, 3]
    assert builds(tmp_path) == {os.getpid(): 1}
    assert len({row["tok_id"] for row in out}) == 1  # one object, every node and item


def test_async_runner_builds_once_for_many_concurrent_tasks(tmp_path: Path) -> None:
    @node(output_name="out")
    async def ask(text: str, tok: Any = resource("tok")) -> str:
        await asyncio.sleep(0)
        return tok.id

    # twenty independent nodes: twenty tasks ask for "tok" at once
    nodes = [ask.rename(outputs={"out": f"out{i}"}, name=f"ask{i}") for i in range(20)]
    runner = AsyncRunner(resources={"tok": functools.partial(Tokenizer, str(tmp_path))})
    out = asyncio.run(runner.run(Graph(nodes), {"text": "x"}))
    assert len(set(out.values())) == 1
    mapped = asyncio.run(runner.map(Graph(nodes[:3]), {"text": list("abcdef") * 50},
                                    map_over="text", batch_size=4))  # fmt: skip
    assert {row["out0"] for row in mapped} == set(out.values())
    assert builds(tmp_path) == {os.getpid(): 1}


def test_every_node_kind_gets_the_resource(tmp_path: Path) -> None:
    @node(output_name="a")
    async def in_async(text: str, tok: Any = resource("tok")) -> list[int]:
        return tok.encode(text)

    @node(output_name="b")
    def in_generator(text: str, tok: Any = resource("tok")) -> Any:
        yield from tok.encode(text)

    @node(output_name="c", batch=True)
    def in_batch(text: list[str], tok: Any = resource("tok")) -> list[int]:
        return [sum(tok.encode(t)) for t in text]

    @node(output_name="d")
    def first(tok: Any = resource("tok"), text: str = "") -> int:  # before the input
        return tok.encode(text)[0]

    graph = Graph([in_async, in_generator, in_batch, first])
    factory = functools.partial(Tokenizer, str(tmp_path), 2)
    for runner in (Runner(resources={"tok": factory}), AsyncRunner(resources={"tok": factory})):
        out = runner.map(graph, {"text": ["ab", "c"]}, map_over="text")
        out = asyncio.run(out) if asyncio.iscoroutine(out) else out
        assert out == [
            {"a": [194, 196], "b": [194, 196], "c": 390, "d": 194},
            {"a": [198], "b": [198], "c": 198, "d": 198},
        ]
    assert builds(tmp_path) == {os.getpid(): 2}  # once per runner (each has its broker)


def test_a_nested_graph_gets_the_outer_runners_resources(tmp_path: Path) -> None:
    inner = Graph([tokenize], name="inner").as_node(name="nested")
    runner = Runner(resources={"tok": functools.partial(Tokenizer, str(tmp_path))})
    assert runner.run(Graph([inner, count]), {"text": "hey"}) == {"ids": [104, 101, 121], "n": 3}
    assert builds(tmp_path) == {os.getpid(): 1}


def test_an_object_is_used_as_it_is_and_never_closed(tmp_path: Path) -> None:
    tok = Tokenizer(str(tmp_path))
    broker = EngineBroker(resources={"tok": tok})
    assert Runner(engines=broker).run(GRAPH, {"text": "ab"}) == {"ids": [97, 98], "n": 2}
    broker.close()
    assert builds(tmp_path) == {os.getpid(): 1} and closes(tmp_path) == 0


def test_resources_join_a_broker_given_as_engines(tmp_path: Path) -> None:
    broker = EngineBroker({"e": ScriptedEngine("upper")}, max_live=1)
    runner = Runner(engines=broker, resources={"tok": functools.partial(Tokenizer, str(tmp_path))})
    assert runner.run(GRAPH, {"text": "a"}) == {"ids": [97], "n": 1}
    assert broker.names() == ("e", "tok") and broker.status()["tok"]["live"]
    with pytest.raises(TypeError, match=r"resources= takes a dict of \{name: factory or object\}"):
        Runner(resources=[Tokenizer])  # type: ignore[arg-type]


# -- release ----------------------------------------------------------------------------------


def test_the_broker_closes_what_it_built_and_builds_again_on_the_next_use(tmp_path: Path) -> None:
    broker = EngineBroker(resources={"tok": functools.partial(Tokenizer, str(tmp_path)),
                                     "pool": functools.partial(Pool, str(tmp_path))})  # fmt: skip
    runner = Runner(engines=broker)
    runner.run(GRAPH, {"text": "a"})
    with broker.lease("pool") as pool:
        assert isinstance(pool, Pool)
    assert broker.status()["tok"]["live"] and closes(tmp_path) == 0
    assert broker.flush(force=True) == ["tok", "pool"]
    assert closes(tmp_path) == 1 and (tmp_path / "pool-exited").exists()
    runner.run(GRAPH, {"text": "a"})
    assert builds(tmp_path) == {os.getpid(): 2}
    broker.close()
    assert closes(tmp_path) == 2


def test_a_leased_resource_is_never_flushed(tmp_path: Path) -> None:
    broker = EngineBroker(resources={"tok": functools.partial(Tokenizer, str(tmp_path))})
    lease = broker.lease("tok")
    assert broker.flush(force=True) == [] and closes(tmp_path) == 0
    lease.release()
    lease.release()  # once only
    assert broker.status()["tok"]["refs"] == 0
    assert broker.flush(force=True) == ["tok"]


def test_resources_neither_count_against_max_live_nor_are_evicted(tmp_path: Path) -> None:
    broker = EngineBroker(
        {"e": ScriptedEngine("upper")},
        resources={"tok": functools.partial(Tokenizer, str(tmp_path))},
        max_live=1,
    )
    with broker.lease("tok"), broker.acquire("e") as engine:  # would wait forever if counted
        assert engine.generate(["hi"]) == ["HI"]
    with broker.acquire("e"):
        pass
    assert broker.status()["tok"]["live"] and closes(tmp_path) == 0


# -- errors --------------------------------------------------------------------------------------


class Flaky:
    """Fails the first build (its marker file does not exist yet), then works."""

    def __init__(self, folder: str) -> None:
        marker = Path(folder, "tried")
        if not marker.exists():
            marker.touch()
            msg = "model file not found"
            raise OSError(msg)
        self.id = "ok"

    def encode(self, text: str) -> list[int]:
        return [len(text)]


def test_a_factory_that_raises_names_resource_and_node_and_the_next_use_retries(
    tmp_path: Path,
) -> None:
    runner = Runner(resources={"tok": functools.partial(Flaky, str(tmp_path))})
    with pytest.raises(NodeError, match=r"node 'tokenize' failed with ResourceError") as info:
        runner.run(GRAPH, {"text": "abc"})
    error = info.value.__cause__
    assert isinstance(error, ResourceError)
    assert (error.resource, error.node) == ("tok", "tokenize")
    assert str(error) == (
        "resource 'tok' for node 'tokenize' could not be built: OSError: model file not found"
    )
    assert isinstance(error.__cause__, OSError)
    assert pickle.loads(pickle.dumps(error)).args == error.args
    assert runner.run(GRAPH, {"text": "abc"}) == {"ids": [3], "n": 1}


def test_a_factory_that_raises_fails_its_items_under_collect(tmp_path: Path) -> None:
    runner = AsyncRunner(resources={"tok": functools.partial(Flaky, str(tmp_path))})
    out = asyncio.run(runner.map(GRAPH, {"text": ["a", "bb"]}, map_over="text",
                                 on_error="collect", batch_size=1))  # fmt: skip
    failed = [row for row in out if not isinstance(row, dict)]
    # the batch that asked first failed; the other built it on its own turn
    assert [(f.error_type, f.node) for f in failed] == [("ResourceError", "tokenize")]
    [ok] = [row for row in out if isinstance(row, dict)]
    assert ok["n"] == 1


def test_an_unknown_resource_is_named_with_the_registered_ones(tmp_path: Path) -> None:
    @node(output_name="ids")
    def typo(text: str, tok: Any = resource("tokz")) -> list[int]:
        return tok.encode(text)

    runner = Runner(resources={"tok": functools.partial(Tokenizer, str(tmp_path)), "db": dict})
    with pytest.raises(NodeError) as info:
        runner.run(Graph([typo]), {"text": "a"})
    error = info.value.__cause__
    assert isinstance(error, UnknownResourceError) and isinstance(error, KeyError)
    assert str(error) == (
        "node 'typo' asks for unknown resource 'tokz'; registered resources: 'tok', 'db'"
    )
    with pytest.raises(NodeError) as info:
        Runner().run(Graph([typo]), {"text": "a"})
    assert str(info.value.__cause__) == (
        "node 'typo' asks for resource 'tokz', but the runner has no resources: "
        "pass Runner(resources={'tokz': factory_or_object})"
    )


def test_an_object_that_cannot_pickle_is_named_where_it_must_travel() -> None:
    broker = EngineBroker(resources={"lock": threading.Lock(), "tok": dict})
    with pytest.raises(TypeError, match=r"resource 'lock' \(lock\) cannot be pickled .*factory"):
        pickle.dumps(broker)


# -- cache keys -----------------------------------------------------------------------------------


def load_small(folder: str) -> Tokenizer:
    return Tokenizer(folder)


def load_large(folder: str) -> Tokenizer:
    return Tokenizer(folder, scale=1)  # the same values: only the code differs


class Keyed:
    """A resource object whose identity is its ``__cache_key__``, not its state."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.loaded_at = uuid.uuid4().hex  # state that must not enter the key

    def encode(self, text: str) -> list[int]:
        return [len(text)]

    def __cache_key__(self) -> str:
        return self.model


class Plain:
    def __init__(self) -> None:
        self.loaded_at = uuid.uuid4().hex

    def encode(self, text: str) -> list[int]:
        return [len(text)]


def test_the_factory_enters_the_cache_key(tmp_path: Path) -> None:
    calls, built = tmp_path / "calls", tmp_path / "built"
    built.mkdir()

    @node(output_name="ids")
    def counted(text: str, tok: Any = resource("tok")) -> list[int]:
        record(calls, text)
        return tok.encode(text)

    graph, cache = Graph([counted]), DiskCache(tmp_path / "cache")

    def run(factory: Any) -> list[Any]:
        runner = Runner(cache=cache, resources={"tok": factory})
        return runner.map(graph, {"text": ["a", "b"]}, map_over="text")

    small = functools.partial(load_small, str(built))
    assert run(small) == [{"ids": [97]}, {"ids": [98]}]
    assert run(functools.partial(load_small, str(built))) == [{"ids": [97]}, {"ids": [98]}]
    assert called(calls) == ["a", "b"]  # the same factory: every item a hit
    assert builds(built) == {os.getpid(): 1}  # and a cached rerun builds nothing
    run(functools.partial(load_large, str(built)))
    assert called(calls) == ["a", "b", "a", "b"]  # another factory: misses

    for first, second, hit in [
        (Keyed("bert"), Keyed("bert"), True),  # same __cache_key__, other state
        (Keyed("bert"), Keyed("gpt2"), False),
        (Plain(), Plain(), True),  # no __cache_key__: its type
    ]:
        before = len(called(calls))
        Runner(cache=cache, resources={"tok": first}).run(graph, {"text": "zz"})
        Runner(cache=cache, resources={"tok": second}).run(graph, {"text": "zz"})
        cache.clear()
        assert len(called(calls)) - before == (1 if hit else 2), (first, second)


# -- Dask and Daft: once per worker process ---------------------------------------------------------


@node(output_name="built_by")
def built_by(text: str, tok: Any = resource("tok")) -> str:
    return f"{os.getpid()}:{tok.id}"


def test_dask_builds_once_per_worker_process(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from hypernodes_chain import DaskRunner

    factory = functools.partial(Tokenizer, str(tmp_path))
    graph = Graph([built_by, tokenize])
    texts = [f"t{i}" for i in range(4000)]
    cache = DiskCache(tmp_path / "cache")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=":0", silence_logs=logging.ERROR) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):  # fmt: skip
        runner = DaskRunner(client, cache=cache, resources={"tok": factory})
        out = runner.map(graph, {"text": texts}, map_over="text", batch_size=100)
        assert out[7]["ids"] == [116, 55]
        per_process = builds(tmp_path)
        assert sorted(per_process.values()) == [1, 1], per_process  # two workers, once each
        used = Counter(row["built_by"] for row in out)
        assert {int(k.split(":")[0]) for k in used} == set(per_process)
        assert len(used) == 2  # one object per process, shared by all its items
        runner.close()
    # the teardown plugin closed each worker's resource as its worker closed
    assert closes(tmp_path) == 2
    # the worker's keys are the driver's: a rerun here is all hits, and builds nothing
    again = Runner(cache=cache, resources={"tok": factory})
    assert again.map(graph, {"text": texts}, map_over="text") == out
    assert sum(builds(tmp_path).values()) == 2


@pytest.mark.filterwarnings(r"ignore:unclosed file <_io\.(BufferedReader|FileIO):ResourceWarning")
@pytest.mark.parametrize("concurrency", [None, 1], ids=["in-process", "udf-process"])
def test_daft_builds_once_per_process(tmp_path: Path, concurrency: int | None) -> None:
    os.environ.setdefault("DAFT_ANALYTICS_ENABLED", "0")
    pytest.importorskip("daft")
    from hypernodes_chain import DaftRunner

    runner = DaftRunner(
        concurrency=concurrency, resources={"tok": functools.partial(Tokenizer, str(tmp_path))}
    )
    texts = [f"t{i}" for i in range(300)]
    out = runner.map(Graph([built_by]), {"text": texts}, map_over="text", batch_size=20)
    [who] = {row["built_by"] for row in out}
    [(pid, n)] = builds(tmp_path).items()
    assert n == 1 and who.startswith(f"{pid}:")
    assert (pid == os.getpid()) == (concurrency is None)


@pytest.mark.filterwarnings(r"ignore:unclosed file <_io\.(BufferedReader|FileIO):ResourceWarning")
def test_daft_in_this_process_shares_the_runners_own_broker(tmp_path: Path) -> None:
    """Daft's threads in the driver use the runner's broker, not a copy of it: a run and a map
    of one runner build the resource once."""
    os.environ.setdefault("DAFT_ANALYTICS_ENABLED", "0")
    pytest.importorskip("daft")
    from hypernodes_chain import DaftRunner

    runner = DaftRunner(resources={"tok": functools.partial(Tokenizer, str(tmp_path))})
    graph = Graph([built_by])
    first = runner.run(graph, {"text": "a"})["built_by"]
    rows = runner.map(graph, {"text": ["b", "c"]}, map_over="text")
    assert {row["built_by"] for row in rows} == {first}
    assert builds(tmp_path) == {os.getpid(): 1}
