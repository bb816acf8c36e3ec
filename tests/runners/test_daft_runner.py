"""DaftRunner on real Daft (the native runner): what only Daft can show.

The behaviour every runner shares is in the cross-runner table (tests/runners/
test_cross_runner.py). Here: first the facts of Daft 0.7 the runner is built around, each
checked on the installed version; then a DataFrame as map inputs, ``map_dataframe``
(lazy, struct columns, Daft's own parquet round trip), UDF processes (``concurrency``),
the writer exactly once and resume, events on the driver, a shared DiskCache, engines per
UDF instance, bounded reading, and Ray (in a subprocess, where ``ray`` is installed).

Nodes may run in UDF processes that cannot import this module (Daft starts them with
``python -m``), so its functions travel by value, as a script's would.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import typing
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DAFT_ANALYTICS_ENABLED", "0")  # no telemetry thread leaking sockets
daft = pytest.importorskip("daft")
cloudpickle = pytest.importorskip("cloudpickle")
pydantic = pytest.importorskip("pydantic")

from hypernodes_chain import (  # noqa: E402
    BatchFinished,
    DaftRunner,
    DiskCache,
    Graph,
    MapFinished,
    MemoryCache,
    NodeError,
    NodeFinished,
    Runner,
    UnknownInputError,
    node,
)
from hypernodes_chain.engines import EngineBroker  # noqa: E402
from hypernodes_chain.events import EngineStarted  # noqa: E402
from hypernodes_chain.io import StreamWriter, read_jsonl  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Daft 0.7.26 never closes the stdout pipe of a UDF process it has torn down
# (daft/execution/udf.py, UdfHandle.teardown): a ResourceWarning when the handle is collected
PIPE = r"unclosed file <_io\.(BufferedReader|FileIO)"
pytestmark = pytest.mark.filterwarnings(f"ignore:{PIPE}:ResourceWarning")


@pytest.fixture(scope="module", autouse=True)
def _collect_udf_handles() -> Any:
    """Let Daft drop this module's last UDF handles here, under the filter, not in a later
    module's test (it drops them when the next query starts)."""
    yield
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", PIPE, ResourceWarning)
        daft.from_pydict({"x": [1]}).collect()
        gc.collect()


ROOT = Path(__file__).resolve().parents[2]
DataType = daft.DataType


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


def chain_rows(xs: Any) -> list[dict[str, int]]:
    return [{"a": x + 1, "b": 2 * (x + 1)} for x in xs]


# -- the facts of Daft 0.7 that shape DaftRunner ------------------------------------------

SEEN: list[int] = []  # rows a UDF of this process has seen (module-level: Daft pickles UDFs)


def test_fact_concurrency_comes_only_from_daft_cls() -> None:
    with pytest.raises(ValueError, match=r"max_concurrency.*has no effect"):
        daft.func.batch(return_dtype=DataType.int64(), max_concurrency=2)(lambda x: x)
    with pytest.warns(DeprecationWarning, match=r"`@daft.udf` decorator is deprecated"):
        daft.udf(return_dtype=DataType.int64())(lambda x: x)


def test_fact_dtypes_come_from_return_annotations() -> None:
    class Summary(pydantic.BaseModel):
        title: str
        score: float

    class Pair(typing.TypedDict):
        n: int
        s: str

    infer = DataType.infer_from_type
    assert str(infer(Summary)) == "Struct[title: String, score: Float64]"
    assert str(infer(Pair)) == "Struct[n: Int64, s: String]"
    assert str(infer(dict)) == "Map[Python: Python]"
    assert infer(typing.Any) == DataType.python()


def test_fact_udfs_over_python_objects_stay_in_the_drivers_process() -> None:
    @daft.func.batch(return_dtype=DataType.python(), use_process=True)
    def where(x: Any) -> list[int]:
        return [os.getpid()] * len(x)

    out = daft.from_pydict({"x": [1, 2]}).select(where(daft.col("x"))).to_pydict()
    assert set(next(iter(out.values()))) == {os.getpid()}


def test_fact_an_error_in_a_udf_process_arrives_as_a_bare_runtime_error() -> None:
    @daft.func.batch(return_dtype=DataType.int64(), use_process=True)
    def boom(x: Any) -> list[int]:
        try:
            1 / 0
        except ZeroDivisionError as exc:
            raise ValueError("told apart") from exc

    with pytest.raises(RuntimeError) as info:
        daft.from_pydict({"x": [1]}).select(boom(daft.col("x"))).collect()
    assert type(info.value) is RuntimeError and info.value.__cause__ is None
    assert "told apart" in str(info.value)  # only as text, in a traceback


def test_fact_a_data_source_hands_over_every_task_before_the_first_is_read() -> None:
    import pyarrow as pa
    from daft.io import DataSource, DataSourceTask
    from daft.recordbatch import RecordBatch

    log: list[str] = []
    schema = daft.Schema.from_pyarrow_schema(pa.schema([("i", pa.int64())]))

    class Task(DataSourceTask):
        def __init__(self, i: int) -> None:
            self.i = i

        @property
        def schema(self) -> Any:
            return schema

        async def read(self) -> Any:
            log.append(f"read {self.i}")
            yield RecordBatch.from_pydict({"i": [self.i]})

    class Source(DataSource):
        name = "probe"

        @property
        def schema(self) -> Any:
            return schema

        async def get_tasks(self, pushdowns: Any) -> Any:
            for i in range(3):
                log.append(f"task {i}")
                yield Task(i)

    assert sorted(Source().read().to_pydict()["i"]) == [0, 1, 2]
    assert log[:3] == ["task 0", "task 1", "task 2"], log  # drained, then read: not lazy


def test_fact_daft_computes_ahead_of_a_slow_consumer() -> None:
    @daft.func.batch(return_dtype=DataType.int64(), use_process=False)
    def seen(x: Any) -> Any:
        SEEN.append(len(x))
        return x

    SEEN.clear()
    n = 1_000_000
    parts = daft.range(n).select(seen(daft.col("id"))).iter_partitions(results_buffer_size=1)
    first = next(parts)
    time.sleep(0.5)  # a slow consumer of the first partition
    assert len(first) < n
    assert sum(SEEN) == n, "Daft waited for the consumer"
    parts.close()


# -- map and imap ---------------------------------------------------------------------------


def test_a_dataframe_as_map_inputs() -> None:
    @node
    def weighted(x: int, y: int) -> int:
        return 10 * x + y

    df = daft.from_pydict({"x": [1, 2, 3], "y": [4, 5, 6], "ignored": ["p", "q", "r"]})
    runner = DaftRunner()
    out = runner.map(Graph([weighted]), df, map_over=["x", "y"], batch_size=2)
    assert out == [{"weighted": 14}, {"weighted": 25}, {"weighted": 36}]
    assert list(runner.imap(CHAIN, df, map_over="x")) == chain_rows([1, 2, 3])
    with pytest.raises(UnknownInputError, match=r"\['z'\], which are not columns"):
        runner.map(CHAIN, df, map_over="z")


def test_imap_reads_a_huge_generator_at_most_in_flight_batches_ahead() -> None:
    n, batch = 100_000, 1_000
    drawn = 0

    def numbers() -> Any:
        nonlocal drawn
        for i in range(n):
            drawn += 1
            yield i

    runner = DaftRunner()
    window = runner._in_flight
    worst = 0
    for i, row in enumerate(runner.imap(CHAIN, {"x": numbers()}, map_over="x", batch_size=batch)):
        assert row == {"a": i + 1, "b": 2 * (i + 1)}
        if i % batch == 0:
            worst = max(worst, drawn - i)
    assert i == n - 1
    assert worst <= (window + 1) * batch, f"the generator ran {worst} items ahead"


def test_results_come_back_in_input_order_when_batches_finish_out_of_order() -> None:
    @node
    def slow_first(x: int) -> int:
        if x == 0:  # the first batch is the slowest
            time.sleep(0.3)
        return x

    out = DaftRunner().map(Graph([slow_first]), {"x": range(40)}, map_over="x", batch_size=10)
    assert out == [{"slow_first": i} for i in range(40)]


def test_callbacks_run_on_the_drivers_thread_with_the_batches_events() -> None:
    seen: list[tuple[str, int]] = []
    events: list[Any] = []

    def callback(event: Any) -> None:
        seen.append((type(event).__name__, threading.get_ident()))
        events.append(event)

    DaftRunner(callbacks=[callback]).map(CHAIN, {"x": range(25)}, map_over="x", batch_size=10)
    assert {ident for _, ident in seen} == {threading.get_ident()}
    finished = Counter((e.node, e.n_items) for e in events if isinstance(e, NodeFinished))
    assert finished == Counter({("add_one", 10): 2, ("add_one", 5): 1, ("double", 10): 2,
                                ("double", 5): 1})  # fmt: skip
    assert [(e.start, e.n_items) for e in events if isinstance(e, BatchFinished)] == [
        (0, 10),
        (10, 10),
        (20, 5),
    ]
    assert [e.n_ok for e in events if isinstance(e, MapFinished)] == [25]


def test_the_progress_display_works_unchanged() -> None:
    import io

    from rich.console import Console

    from hypernodes_chain import ProgressCallback

    screen = io.StringIO()
    progress = ProgressCallback(Console(file=screen, width=100), enabled=True)
    DaftRunner(callbacks=[progress]).map(CHAIN, {"x": range(30)}, map_over="x", batch_size=10)
    progress.close()
    shown = screen.getvalue()
    assert "add_one" in shown and "double" in shown and "30" in shown, shown


def test_the_writer_gets_every_item_exactly_once_and_a_failed_map_resumes(tmp_path: Path) -> None:
    calls, crash = tmp_path / "calls.jsonl", tmp_path / "crash"
    crash.write_text("")

    @node
    def tripled(x: int) -> int:
        if x == 250 and crash.exists():
            raise RuntimeError("the machine went down")
        record(calls, x)
        return 3 * x

    graph, out = Graph([tripled], name="tripled"), tmp_path / "out"
    with pytest.raises(NodeError, match="the machine went down"):
        DaftRunner().map(
            graph, {"x": range(600)}, map_over="x", batch_size=50,
            writer=StreamWriter(out, max_lines_per_file=100),
        )  # fmt: skip
    stored = sorted(r["_index"] for r in read_jsonl(out))
    assert stored and stored == list(range(len(stored))), "committed shards hold a prefix"
    crash.unlink()
    result = DaftRunner().map(
        graph, {"x": range(600)}, map_over="x", batch_size=50,
        writer=StreamWriter(out, max_lines_per_file=100, resume=True),
    )  # fmt: skip
    assert result.n_skipped == len(stored) and result.total_ok == 600
    rows = list(read_jsonl(out))
    assert sorted(r["_index"] for r in rows) == list(range(600)), "an item is missing or twice"
    assert all(r["tripled"] == 3 * r["x"] for r in rows)
    again = [x for x in lines(calls) if x < len(stored)]
    assert sorted(again) == list(range(len(stored))), "stored items were computed again"


# -- UDF processes ------------------------------------------------------------------------


def test_concurrency_runs_batches_in_udf_processes_and_their_events_reach_the_driver(
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls.jsonl"

    @node
    def square(x: int) -> int:
        time.sleep(0.01)
        record(calls, [os.getpid(), x])
        return x * x

    events: list[Any] = []
    runner = DaftRunner(concurrency=2, callbacks=[events.append])
    out = runner.map(Graph([square]), {"x": range(40)}, map_over="x", batch_size=5)
    assert out == [{"square": i * i} for i in range(40)]
    pids = {pid for pid, _ in lines(calls)}
    assert len(pids) == 2 and os.getpid() not in pids, "two UDF processes did the work"
    assert sum(e.n_items for e in events if isinstance(e, NodeFinished)) == 40
    assert [e.n_ok for e in events if isinstance(e, MapFinished)] == [40]


def test_an_error_in_a_udf_process_is_the_nodes_error_with_its_cause() -> None:
    @node
    def inv(x: int) -> float:
        return 1 / x

    runner = DaftRunner(concurrency=1)
    with pytest.raises(
        NodeError, match=r"node 'inv' for item 1 failed with ZeroDivisionError"
    ) as info:
        runner.map(Graph([inv]), {"x": [1, 0, 2]}, map_over="x")
    assert (info.value.node, info.value.index) == ("inv", 1)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_value_that_cannot_be_pickled_fails_its_item_alone_in_a_udf_process(
    tmp_path: Path,
) -> None:
    calls, out = tmp_path / "calls.jsonl", tmp_path / "out"

    @node
    def make(x: int) -> Any:
        record(calls, x)
        return threading.Lock() if x == 3 else x

    graph = Graph([make], name="g")
    result = DaftRunner(concurrency=1).map(
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
    assert (error["_index"], error["node"]) == (3, "make")
    assert Counter(lines(calls)) == dict.fromkeys(range(6), 1)

    with pytest.raises(NodeError, match=r"node 'make' for item 3 failed") as info:
        DaftRunner(concurrency=1).map(graph, {"x": range(6)}, map_over="x", batch_size=2)
    assert (info.value.node, info.value.index) == ("make", 3)
    assert "cannot pickle '_thread.lock' object" in str(info.value.__cause__)


def test_what_cannot_travel_to_a_udf_process_is_named() -> None:
    lock = threading.Lock()

    @node
    def locked(x: int) -> int:
        with lock:
            return x

    with pytest.raises(TypeError, match=r"node 'locked' cannot be pickled to send it to Daft"):
        DaftRunner(concurrency=2).map(Graph([locked]), {"x": [1, 2]}, map_over="x")


def test_a_map_cached_by_runner_is_a_full_hit_under_daft_udf_processes(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"

    @node
    def square(x: int) -> int:
        record(calls, x)
        return x * x

    graph = Graph([square], name="squares")
    with DiskCache(tmp_path / "cache") as cache:
        first = Runner(cache=cache).map(graph, {"x": range(50)}, map_over="x")
        assert sorted(lines(calls)) == list(range(50))
        calls.unlink()
        again = DaftRunner(cache=cache, concurrency=2).map(
            graph, {"x": range(50)}, map_over="x", batch_size=10
        )
        assert again == first and lines(calls) == [], "a key differed from Runner's"


def test_a_memory_cache_is_refused_where_the_udf_leaves_this_process() -> None:
    with pytest.raises(TypeError, match=r"cannot share a MemoryCache.*concurrency="):
        DaftRunner(concurrency=2, cache=MemoryCache())
    from hypernodes_chain.llm import llm_node

    @llm_node(engine="up", output_name="shout")
    def shout(text: str) -> str:
        return text

    runner = DaftRunner(cache=MemoryCache(), engines={"up": FileEngine(os.devnull)})
    with pytest.raises(TypeError, match=r"MemoryCache.*\(LLM nodes"):
        runner.map(Graph([shout]), {"text": ["a"]}, map_over="text")


class FileEngine:
    """Answers with the prompt upper-cased; records its starts and stops (with the process
    id) in a file, so the test sees what happened in the UDF processes."""

    max_concurrency = 1

    def __init__(self, log: str) -> None:
        self.log = log

    def start(self) -> None:
        record(Path(self.log), ["start", os.getpid()])

    def stop(self) -> None:
        record(Path(self.log), ["stop", os.getpid()])

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


def test_a_graph_with_llm_nodes_runs_as_a_class_udf_with_its_own_broker(tmp_path: Path) -> None:
    from hypernodes_chain.llm import llm_node

    log = tmp_path / "engine.jsonl"

    @llm_node(engine="up", output_name="shout")
    def shout(text: str) -> str:
        return text

    events: list[Any] = []
    broker = EngineBroker({"up": lambda: FileEngine(str(log))})
    runner = DaftRunner(engines=broker, callbacks=[events.append])
    texts = [f"item {i}" for i in range(40)]
    out = runner.map(Graph([shout]), {"text": texts}, map_over="text", batch_size=5)
    assert out == [{"shout": t.upper()} for t in texts]
    starts = [pid for what, pid in lines(log) if what == "start"]
    assert len(starts) == 1 and starts[0] != os.getpid(), "one instance, one engine start"
    assert sum(isinstance(e, EngineStarted) for e in events) == 1
    assert broker.status()["up"]["starts"] == 0, "the driver's broker never started it"
    deadline = time.monotonic() + 30  # the UDF process stops it when it exits, after the query
    while not [p for what, p in lines(log) if what == "stop"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for what, pid in lines(log) if what == "stop"] == starts


# -- map_dataframe --------------------------------------------------------------------------


class Summary(pydantic.BaseModel):
    title: str
    score: float


class Stats(typing.TypedDict):
    n: int
    word: str


def _frame_graph(calls: Path) -> Graph:
    @node
    def summary(text: str, stars: int) -> Summary:
        record(calls, text)
        return Summary(title=text.title(), score=stars / 5)

    @node
    def stats(text: str) -> Stats:
        return {"n": len(text.split()), "word": text.split()[0]}

    @node
    def loud(text: str) -> str:
        return text.upper()

    return Graph([summary, stats, loud], name="reviews")


def test_map_dataframe_is_lazy_and_adds_the_outputs_as_columns(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    df = daft.from_pydict({"text": ["good stuff", "bad one", "meh"], "stars": [5, 1, 3],
                           "id": [10, 11, 12]})  # fmt: skip
    out = DaftRunner().map_dataframe(_frame_graph(calls), df, batch_size=2)
    assert lines(calls) == [], "a node ran before collect"
    schema = {f.name: str(f.dtype) for f in out.schema()}
    assert schema == {
        "text": "String",
        "stars": "Int64",
        "id": "Int64",
        "summary": "Struct[title: String, score: Float64]",
        "stats": "Struct[n: Int64, word: String]",
        "loud": "String",
    }
    rows = out.sort("id").to_pylist()
    assert sorted(lines(calls)) == ["bad one", "good stuff", "meh"]
    assert rows[0] == {
        "text": "good stuff",
        "stars": 5,
        "id": 10,
        "summary": {"title": "Good Stuff", "score": 1.0},
        "stats": {"n": 2, "word": "good"},
        "loud": "GOOD STUFF",
    }
    narrowed = DaftRunner().map_dataframe(_frame_graph(calls), df, output_name="loud")
    assert narrowed.column_names == ["text", "stars", "id", "loud"]


def test_map_dataframe_round_trips_through_daft_parquet(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    source = tmp_path / "in"
    daft.from_pydict({"text": [f"word {i}" for i in range(50)], "stars": [i % 6 for i in range(50)]}
                     ).write_parquet(str(source))  # fmt: skip
    graph = _frame_graph(calls)
    DaftRunner().map_dataframe(graph, daft.read_parquet(str(source))).write_parquet(
        str(tmp_path / "out")
    )
    back = daft.read_parquet(str(tmp_path / "out")).sort("text").to_pylist()
    assert len(back) == 50
    expected = Runner().map(
        graph, {"text": [r["text"] for r in back], "stars": [r["stars"] for r in back]},
        map_over=["text", "stars"],
    )  # fmt: skip
    for row, want in zip(back, expected):
        assert row["summary"] == want["summary"].model_dump()
        assert row["stats"] == want["stats"] and row["loud"] == want["loud"]


def test_map_dataframe_in_udf_processes_and_its_errors(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"

    @node
    def inv(x: int) -> float:
        record(calls, os.getpid())
        return 1 / x

    graph = Graph([inv], name="inv")
    df = daft.from_pydict({"x": [1, 2, 4, 0]})
    out = DaftRunner(concurrency=2).map_dataframe(graph, df.where(daft.col("x") > 0))
    assert sorted(out.to_pydict()["inv"]) == [0.25, 0.5, 1.0]
    assert os.getpid() not in set(lines(calls)), "the UDF ran in UDF processes"
    with pytest.raises(NodeError, match=r"node 'inv' for item \d failed with ZeroDivision") as info:
        DaftRunner().map_dataframe(graph, df).collect()  # in this process: the error itself
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_map_dataframe_with_a_shared_disk_cache_hits_runners_keys(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    graph = _frame_graph(calls)
    texts, stars = ["a b", "c d", "e"], [1, 2, 3]
    with DiskCache(tmp_path / "cache") as cache:
        Runner(cache=cache).map(graph, {"text": texts, "stars": stars}, map_over=["text", "stars"])
        calls.unlink()
        df = daft.from_pydict({"text": texts, "stars": stars})
        out = DaftRunner(cache=cache).map_dataframe(graph, df).to_pydict()
    assert out["loud"] == ["A B", "C D", "E"] and lines(calls) == []


def test_map_dataframe_of_a_bound_graph_takes_its_bound_values(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"

    @node
    def scaled(x: int, k: int) -> int:
        record(calls, x)
        return x * k

    graph = Graph([scaled], name="scale").bind(k=10)
    df = daft.from_pydict({"x": [1, 2, 3]})
    with DiskCache(tmp_path / "cache") as cache:
        Runner(cache=cache).map(graph, {"x": [1, 2, 3]}, map_over="x")
        calls.unlink()
        for runner in (DaftRunner(cache=cache), DaftRunner(cache=cache, concurrency=1)):
            out = runner.map_dataframe(graph, df).to_pydict()
            assert out == {"x": [1, 2, 3], "scaled": [10, 20, 30]}
        assert not calls.exists(), "the bound value's keys are Runner's: every row a hit"
        out = DaftRunner(cache=cache).map_dataframe(graph.bind(k=2), df).to_pydict()
    assert out["scaled"] == [2, 4, 6] and sorted(lines(calls)) == [1, 2, 3]


# -- the package and Ray ------------------------------------------------------------------


def test_importing_the_package_does_not_import_daft() -> None:
    code = "import sys, hypernodes_chain; assert 'daft' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


ON_RAY = """
import json, os, sys
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
import daft
daft.set_runner_ray()
from hypernodes_chain import DaftRunner, DiskCache, Graph, node

@node
def square(x: int) -> int:
    return x * x

graph = Graph([square], name="squares")
out = {}
with DiskCache(sys.argv[1]) as cache:
    out["map"] = DaftRunner(cache=cache).map(graph, {"x": range(30)}, map_over="x", batch_size=4)
    out["cls"] = DaftRunner(concurrency=2).map(graph, {"x": range(10)}, map_over="x", batch_size=4)
    df = daft.from_pydict({"x": [1, 2, 3]})
    out["frame"] = DaftRunner().map_dataframe(graph, df).sort("x").to_pydict()
print(json.dumps(out))
ray.shutdown()
"""


@pytest.mark.slow
def test_on_daft_s_ray_runner_with_a_local_ray_head(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    script = tmp_path / "on_ray.py"
    script.write_text(textwrap.dedent(ON_RAY))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["map"] == [{"square": i * i} for i in range(30)]
    assert out["cls"] == [{"square": i * i} for i in range(10)]
    assert out["frame"] == {"x": [1, 2, 3], "square": [1, 4, 9]}
