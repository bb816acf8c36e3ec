"""DaskRunner on a real LocalCluster of worker processes: what only a cluster can show.

The behaviour every runner shares is in the cross-runner table (tests/runners/
test_cross_runner.py); here: bounded reading of huge generators, resume after the driver
died, events from workers on the driver's bus, a DiskCache shared by processes, a worker
killed mid-map, engines per worker process, clear errors for what cannot travel, and the
cluster the runner starts itself (closed without leaks).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from hypernodes_chain import (  # noqa: E402
    BatchFinished,
    DaskRunner,
    DiskCache,
    Graph,
    MapFinished,
    MemoryCache,
    NodeError,
    NodeFailed,
    NodeFinished,
    Runner,
    node,
)
from hypernodes_chain.engines import EngineBroker  # noqa: E402
from hypernodes_chain.events import EngineStarted  # noqa: E402
from hypernodes_chain.io import StreamWriter, read_parquet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> Any:
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Any:
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()


def lines(path: Path) -> list[Any]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def record(path: Path, value: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(value) + "\n")


@node(output_name="a")
def add_one(x: int) -> int:
    return x + 1


@node(output_name="b")
def double(a: int) -> int:
    return a * 2


CHAIN = Graph([add_one, double], name="chain")


# -- map and imap --------------------------------------------------------------------------


def test_imap_reads_a_huge_generator_at_most_max_in_flight_batches_ahead(client: Any) -> None:
    n, batch, window = 200_000, 1_000, 3
    drawn = 0

    def numbers() -> Any:
        nonlocal drawn
        for i in range(n):
            drawn += 1
            yield i

    worst = 0
    runner = DaskRunner(client, max_in_flight=window)
    results = runner.imap(CHAIN, {"x": numbers()}, map_over="x", batch_size=batch)
    for i, row in enumerate(results):
        assert row == {"a": i + 1, "b": 2 * (i + 1)}
        if i % batch == 0:  # the first row of each batch: how far the generator ran ahead
            worst = max(worst, drawn - i)
    assert i == n - 1
    # the batch being handed on, plus at most `window` batches out (and the one being cut)
    assert worst <= (window + 1) * batch, f"the generator ran {worst} items ahead"
    assert worst > batch, "nothing was ever in flight: the map did not overlap batches"


def test_results_come_back_in_input_order_when_batches_finish_out_of_order(client: Any) -> None:
    @node
    def slow_first(x: int) -> int:
        if x < 10:  # the first batch is the slowest
            time.sleep(0.3)
        return x

    runner = DaskRunner(client, max_in_flight=4)
    out = runner.map(Graph([slow_first]), {"x": range(40)}, map_over="x", batch_size=10)
    assert out == [{"slow_first": i} for i in range(40)]


def test_map_on_error_collect_and_raise(client: Any) -> None:
    @node
    def inv(x: int) -> float:
        return 1 / x

    graph = Graph([inv], name="inv")
    runner = DaskRunner(client)
    out = runner.map(graph, {"x": [1, 0, 2]}, map_over="x", on_error="collect", batch_size=2)
    assert out[0] == {"inv": 1.0} and out[2] == {"inv": 0.5}
    failure = out[1]
    assert (failure.index, failure.node, failure.error_type) == (1, "inv", "ZeroDivisionError")
    assert failure.inputs == {"x": 0}
    with pytest.raises(NodeError, match=r"node 'inv' for item 1 failed with ZeroDivisionError"):
        runner.map(graph, {"x": [1, 0, 2]}, map_over="x", batch_size=2)


def test_run_puts_independent_nodes_on_different_workers(client: Any) -> None:
    @node
    def left(x: int) -> int:
        time.sleep(0.5)  # both are running at once: one cannot wait for the other's worker
        return os.getpid()

    @node
    def right(x: int) -> int:
        time.sleep(0.5)
        return os.getpid()

    out = DaskRunner(client).run(Graph([left, right]), {"x": 1})
    workers = set(client.run(os.getpid).values())
    assert {out["left"], out["right"]} == workers, (out, workers)


# -- events, cache -------------------------------------------------------------------------


def test_callbacks_on_the_driver_see_the_workers_batches(client: Any) -> None:
    events: list[Any] = []
    runner = DaskRunner(client, callbacks=[events.append])
    runner.map(CHAIN, {"x": range(25)}, map_over="x", batch_size=10)
    finished = Counter(
        (e.node, e.n_items) for e in events if isinstance(e, NodeFinished) and e.n_items
    )
    assert finished == Counter({("add_one", 10): 2, ("add_one", 5): 1, ("double", 10): 2,
                                ("double", 5): 1})  # fmt: skip
    batches = [(e.start, e.n_items) for e in events if isinstance(e, BatchFinished)]
    assert batches == [(0, 10), (10, 10), (20, 5)]
    assert [e.n_ok for e in events if isinstance(e, MapFinished)] == [25]


def test_json_logs_and_the_progress_display_work_unchanged(client: Any) -> None:
    import io

    from rich.console import Console

    from hypernodes_chain import JsonLogCallback, ProgressCallback

    logs, screen = io.StringIO(), io.StringIO()
    console = Console(file=screen, width=100, force_terminal=False)
    progress = ProgressCallback(console, enabled=True)
    runner = DaskRunner(client, callbacks=[JsonLogCallback(logs), progress])
    runner.map(CHAIN, {"x": range(30)}, map_over="x", batch_size=10)
    progress.close()
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    kinds = Counter(r["event"] for r in records)
    assert kinds["BatchFinished"] == 3 and kinds["MapFinished"] == 1
    node_done = [r for r in records if r["event"] == "NodeFinished"]
    assert sorted((r["node"], r["n_items"]) for r in node_done) == sorted(
        [("add_one", 10)] * 3 + [("double", 10)] * 3
    )
    shown = screen.getvalue()
    assert "add_one" in shown and "double" in shown and "30" in shown, shown


def test_a_shared_disk_cache_makes_the_second_run_call_nothing(client: Any, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"

    @node
    def square(x: int) -> int:
        record(calls, [os.getpid(), x])
        return x * x

    graph = Graph([square], name="squares")
    with DiskCache(tmp_path / "cache") as cache:
        first = DaskRunner(client, cache=cache).map(
            graph, {"x": range(50)}, map_over="x", batch_size=10
        )
        assert sorted(x for _, x in lines(calls)) == list(range(50))
        assert len({pid for pid, _ in lines(calls)}) == 2, "both workers computed"
        calls.unlink()
        again = DaskRunner(client, cache=cache).map(
            graph, {"x": range(50)}, map_over="x", batch_size=10
        )
        assert again == first == [{"square": i * i} for i in range(50)]
        assert lines(calls) == [], "the second run called the node"
        # the keys are Runner's: Runner finds every one of them too
        assert Runner(cache=cache).map(graph, {"x": range(50)}, map_over="x") == first
        assert lines(calls) == []


def test_a_memory_cache_is_refused_with_a_clear_error(client: Any) -> None:
    with pytest.raises(TypeError, match="cannot share a MemoryCache"):
        DaskRunner(client, cache=MemoryCache())
    runner = DaskRunner(client)
    runner.cache = MemoryCache()
    with pytest.raises(TypeError, match="use DiskCache"):
        runner.map(CHAIN, {"x": [1]}, map_over="x")


# -- what cannot travel --------------------------------------------------------------------


def test_a_node_that_cannot_be_pickled_is_named(client: Any) -> None:
    lock = threading.Lock()

    @node
    def locked(x: int) -> int:
        with lock:
            return x

    graph = Graph([add_one, locked], name="g")
    with pytest.raises(TypeError, match=r"node 'locked' cannot be pickled"):
        DaskRunner(client).map(graph, {"x": [1, 2]}, map_over="x")
    with pytest.raises(TypeError, match=r"node 'locked' cannot be pickled"):
        DaskRunner(client).run(graph, {"x": 1})


def test_an_input_item_that_cannot_be_pickled_is_named_with_its_index(client: Any) -> None:
    @node
    def kind(x: Any) -> str:
        return type(x).__name__

    items = [1, 2, 3, threading.Lock(), 5]
    with pytest.raises(TypeError, match=r"map input 'x' of item 3 cannot be pickled"):
        DaskRunner(client).map(Graph([kind]), {"x": items}, map_over="x", batch_size=2)

    @node
    def with_k(x: int, k: Any) -> int:
        return x

    with pytest.raises(TypeError, match=r"input 'k' cannot be pickled"):
        DaskRunner(client).map(Graph([with_k]), {"x": [1], "k": threading.Lock()}, map_over="x")


def lock_at(at: int, calls: Path) -> Any:
    """A node that returns a lock (which cannot be pickled) for ``x == at``, ``x`` else;
    each call leaves a file ``<x>-<unique>`` in ``calls``."""
    calls.mkdir(exist_ok=True)

    @node
    def make(x: int) -> Any:
        (calls / f"{x}-{os.urandom(8).hex()}").touch()
        return threading.Lock() if x == at else x

    return make


def called(calls: Path) -> Counter[int]:
    return Counter(int(p.name.split("-")[0]) for p in calls.iterdir())


def test_a_value_that_cannot_be_pickled_fails_its_item_alone_and_is_not_retried(
    client: Any, tmp_path: Path
) -> None:
    calls, out = tmp_path / "calls", tmp_path / "out"
    graph = Graph([lock_at(3, calls)], name="g")
    events: list[Any] = []
    result = DaskRunner(client, callbacks=[events.append]).map(
        graph, {"x": range(6)}, map_over="x", batch_size=2, on_error="collect",
        writer=StreamWriter(out, format="jsonl"),
    )  # fmt: skip
    assert (result.n_ok, result.n_failed) == (5, 1)
    [failure] = result.failures
    assert (failure.index, failure.node, failure.error_type) == (3, "make", "TypeError")
    assert "output 'make' of node 'make' for item 3 cannot be pickled" in failure.message
    assert "cannot pickle '_thread.lock' object" in failure.message
    rows = [row for shard in sorted(out.glob("*.jsonl")) for row in lines(shard)]
    assert [(r["_index"], r["make"]) for r in rows] == [(i, i) for i in (0, 1, 2, 4, 5)]
    [error] = lines(out / "_errors" / "000.jsonl")
    assert (error["_index"], error["node"], error["error_type"]) == (3, "make", "TypeError")
    assert "cannot pickle '_thread.lock' object" in error["traceback"]
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert [(e.node, e.index, e.n_items) for e in failed] == [("make", 3, 1)]
    assert called(calls) == dict.fromkeys(range(6), 1)  # item 3 ran once: never retried

    again = DaskRunner(client).map(
        graph, {"x": range(6)}, map_over="x", batch_size=2, on_error="collect",
        writer=StreamWriter(out, format="jsonl", resume=True),
    )  # fmt: skip
    assert again.total_ok == 5 and again.total_failed == 1
    rows = [row for shard in sorted(out.glob("*.jsonl")) for row in lines(shard)]
    assert sorted(r["_index"] for r in rows) == [0, 1, 2, 4, 5]


def test_a_value_that_cannot_be_pickled_stops_a_raising_map_naming_node_and_item(
    client: Any, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    graph = Graph([lock_at(3, calls)], name="g")
    with pytest.raises(NodeError, match=r"node 'make' for item 3 failed") as caught:
        DaskRunner(client).map(graph, {"x": range(6)}, map_over="x", batch_size=2)
    assert (caught.value.node, caught.value.index) == ("make", 3)
    cause = caught.value.__cause__
    assert isinstance(cause, TypeError)
    assert "cannot pickle '_thread.lock' object" in str(cause)
    assert called(calls)[3] == 1


def test_run_of_a_value_that_cannot_be_pickled_names_its_node(client: Any, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    match = r"node 'make' failed with TypeError: .* of node 'make' cannot be pickled"
    with pytest.raises(NodeError, match=match) as caught:
        DaskRunner(client).run(Graph([lock_at(3, calls)]), {"x": 3})
    assert caught.value.node == "make"
    assert called(calls) == {3: 1}


def test_a_nested_map_row_that_cannot_be_pickled_is_named_with_its_item(
    client: Any, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    inner = Graph([lock_at(2, calls)], name="inner")
    each = inner.as_node(name="each", map_over="x", output_mapping={"make": "made"})

    @node
    def total(made: list[int]) -> int:
        return sum(made)

    outer = Graph([each, total], name="outer")
    assert DaskRunner(client).run(outer, {"x": [1, 3]}) == {"made": [1, 3], "total": 4}
    match = r"node 'make' for item 1 failed .*the value of node 'make' for item 1 cannot be"
    with pytest.raises(NodeError, match=match):
        DaskRunner(client).run(outer, {"x": [1, 2, 3]})
    assert called(calls)[2] == 1


def test_an_error_that_cannot_be_pickled_still_fails_its_item(client: Any) -> None:
    class Unpicklable(Exception):
        def __init__(self, lock: Any) -> None:
            super().__init__("holds a lock")
            self.lock = lock

    @node
    def bad(x: int) -> int:
        if x == 2:
            raise Unpicklable(threading.Lock())
        return x

    out = DaskRunner(client).map(Graph([bad]), {"x": [1, 2]}, map_over="x", on_error="collect")
    assert out[0] == {"bad": 1}
    assert out[1].node == "bad" and "holds a lock" in str(out[1].error)


# -- a worker killed mid-map ----------------------------------------------------------------


def test_a_worker_killed_mid_map_is_retried_and_every_item_is_written_once(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "killed"

    @node
    def fragile(x: int) -> int:
        if x == 137 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-batch
        return x * 3

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    ) as cluster, distributed.Client(cluster, set_as_default=False) as client:  # fmt: skip
        result = DaskRunner(client, retries=2).map(
            Graph([fragile]),
            {"x": range(400)},
            map_over="x",
            batch_size=20,
            writer=StreamWriter(tmp_path / "out", format="parquet", max_lines_per_file=100),
        )
    assert marker.exists(), "no worker was killed: the test proved nothing"
    assert (result.n_ok, result.n_failed) == (400, 0)
    rows = list(read_parquet(tmp_path / "out"))
    assert [r["_index"] for r in rows] == list(range(400))
    assert [r["fragile"] for r in rows] == [3 * i for i in range(400)]


# -- resume after the driver died ----------------------------------------------------------

DRIVER = """
import sys, time
from hypernodes_chain import DaskRunner, Graph, node
from hypernodes_chain.io import StreamWriter

@node
def tripled(x: int) -> int:
    time.sleep(0.002)
    return 3 * x

if __name__ == "__main__":
    address, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
    with DaskRunner(address, max_in_flight=2) as runner:
        result = runner.map(
            Graph([tripled], name="tripled"), {"x": range(3000)}, map_over="x",
            batch_size=100, writer=StreamWriter(out, max_lines_per_file=200, resume=resume),
        )
    print(result.n_ok, result.n_skipped, result.total_ok)
"""


def _committed_rows(out: Path) -> int:
    """Rows of the shards the manifest lists: those a resumed map skips. (A shard file is
    renamed into place before the manifest lists it, so files on disk can be ahead.)"""
    try:
        return sum(s["rows"] for s in json.loads((out / "_manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_a_map_resumes_after_its_driver_was_killed(cluster: Any, tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, str(script), cluster.scheduler_address, str(out)]
    proc = subprocess.Popen([*args, "new"], env=env)
    try:
        deadline = time.monotonic() + 120  # a bound on a broken run, not a guess at its pace
        while _committed_rows(out) < 600:  # wait until three shards are committed, then kill
            assert proc.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, f"{_committed_rows(out)} rows after 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    stored = _committed_rows(out)  # the driver may have committed more before it died
    assert 600 <= stored < 3000, "the driver finished before the kill: the test proved nothing"
    done = subprocess.run([*args, "resume"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    n_ok, n_skipped, total_ok = map(int, done.stdout.split())
    assert (n_skipped, n_ok, total_ok) == (stored, 3000 - stored, 3000)
    from hypernodes_chain.io import read_jsonl

    rows = list(read_jsonl(out))
    assert sorted(r["_index"] for r in rows) == list(range(3000)), "an item is missing or twice"
    assert all(r["tripled"] == 3 * r["x"] for r in rows)


# -- engines per worker process ------------------------------------------------------------


class FileEngine:
    """An engine that answers with the prompt upper-cased and records its start and stop
    (with the process id) in a file, so the test sees what happened in the workers."""

    max_concurrency = 1

    def __init__(self, log: str) -> None:
        self.log = log

    def _note(self, what: str) -> None:
        record(Path(self.log), [what, os.getpid()])

    def start(self) -> None:
        self._note("start")

    def stop(self) -> None:
        self._note("stop")

    def generate(self, prompts: list[Any], **kw: Any) -> list[str | Exception]:
        return [str(p).upper() for p in prompts]

    async def agenerate(self, prompts: list[Any], **kw: Any) -> list[str | Exception]:
        return self.generate(prompts)

    def stream(self, prompt: Any, **kw: Any) -> Any:
        yield str(prompt).upper()

    async def astream(self, prompt: Any, **kw: Any) -> Any:
        yield str(prompt).upper()

    def identity(self) -> dict[str, Any]:
        return {"engine": "file", "model": "upper"}


def test_each_worker_builds_its_own_engines_and_stops_them_at_teardown(tmp_path: Path) -> None:
    from hypernodes_chain.llm import llm_node

    log = tmp_path / "engine.jsonl"

    @llm_node(engine="up", output_name="shout")
    def shout(text: str) -> str:
        return text

    graph = Graph([shout], name="shout")
    events: list[Any] = []
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, distributed.Client(cluster, set_as_default=False) as client:  # fmt: skip
        workers = set(client.run(os.getpid).values())
        broker = EngineBroker({"up": lambda: FileEngine(str(log))})
        runner = DaskRunner(client, engines=broker, callbacks=[events.append])
        texts = [f"item {i}" for i in range(40)]
        for _ in range(2):  # a second map reuses the engines the workers started
            out = runner.map(graph, {"text": texts}, map_over="text", batch_size=5)
            assert out == [{"shout": t.upper()} for t in texts]
        starts = [pid for what, pid in lines(log) if what == "start"]
        assert sorted(starts) == sorted(workers), "one start per worker process, no more"
        assert not [pid for what, pid in lines(log) if what == "stop"]
        assert sum(isinstance(e, EngineStarted) for e in events) == 2
    stops = [pid for what, pid in lines(log) if what == "stop"]
    assert sorted(stops) == sorted(workers), "each worker stopped its engine at teardown"
    assert broker.status()["up"]["starts"] == 0, "the driver's broker never started the engine"


# -- the cluster the runner starts itself -------------------------------------------------

OWN_CLUSTER = """
import os, sys, warnings
warnings.simplefilter("error")
from hypernodes_chain import DaskRunner, Graph, node

@node
def pid(x: int) -> int:
    return os.getpid()

if __name__ == "__main__":
    runner = DaskRunner(cluster_options={"n_workers": 2})
    out = runner.map(Graph([pid]), {"x": range(20)}, map_over="x", batch_size=2)
    print(" ".join(str(p) for p in sorted({r["pid"] for r in out})), flush=True)
    if sys.argv[1] == "close":
        runner.close()
        runner.close()  # idempotent
    # else: left to interpreter exit
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("how", ["close", "exit"])
def test_the_runners_own_cluster_closes_without_warnings_or_leaks(how: str, tmp_path: Path) -> None:
    script = tmp_path / "own.py"
    script.write_text(textwrap.dedent(OWN_CLUSTER))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(script), how], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2 and os.getpid() not in pids, "the work ran in two worker processes"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "worker processes outlived the runner"
    noise = [line for line in done.stderr.splitlines() if line.strip()]
    assert noise == [], f"closing printed: {noise}"


def test_closures_and_lambdas_travel(client: Any) -> None:
    offset = 7
    shifted = node(lambda x: x + offset, output_name="shifted")  # a lambda over a closure

    def make(scale: int) -> Any:
        @node(output_name="scaled")
        def scaled(shifted: int) -> int:
            return shifted * scale

        return scaled

    out = DaskRunner(client).map(Graph([shifted, make(3)]), {"x": range(5)}, map_over="x")
    assert out == [{"shifted": i + 7, "scaled": 3 * (i + 7)} for i in range(5)]
