"""Engine-aware maps: two engines that do not fit the broker at once, so the map runs its items
in windows of ``engine_window``, one engine segment after the other, through the one map loop.

Every case registers two `ScriptedEngine` factories with ``EngineBroker(max_live=1)`` and maps
``batch_size=10`` items with ``engine_window=50``: the first engine's node (``loud``) may
reject items, the second engine's node (``mirrored``) reads its reply and the item's word.
Each row is checked exactly: a batch that fails whole in the first segment (first of its
window or later) leaves every other row right, and its items stay their own failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

import support.scripted_engine
import support.waiting
from hypernodes_chain import (
    AsyncRunner,
    BatchFinished,
    DaftRunner,
    DaskRunner,
    Graph,
    ItemFailure,
    MapFinished,
    MemoryCache,
    NodeError,
    Runner,
    node,
)
from hypernodes_chain.engines import EngineBroker
from hypernodes_chain.io import StreamWriter, read_jsonl
from hypernodes_chain.llm import llm_node
from support.scripted_engine import ScriptedEngine
from support.waiting import poll_until

with contextlib.suppress(ImportError):
    import cloudpickle

    # Daft's UDF processes cannot import the test modules: these graphs travel by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(support.scripted_engine)
    cloudpickle.register_pickle_by_value(support.waiting)

os.environ.setdefault("DAFT_ANALYTICS_ENABLED", "0")  # daft's telemetry thread leaks a socket

N = 120
WORDS = [f"w{i}" for i in range(N)]
BATCH, WINDOW = 10, 50
REJECTED = {  # which items the first engine's node rejects
    "first-batch-of-a-window": set(range(10)),
    "later-batch-of-a-window": set(range(20, 30)),
    "several-windows": {*range(10), 33, *range(70, 80), 119},
}


@llm_node(engine="upper", output_name="loud")
def loud(word: str, rejected: frozenset[str] = frozenset()) -> str:
    if word in rejected:
        raise ValueError(f"{word} is rejected")
    return f"{word}!"


@llm_node(engine="reverse", output_name="mirrored")
def mirrored(loud: str, word: str) -> str:
    return f"<{loud}|{word}>"  # the second engine reads the first's reply and the item


GRAPH = Graph([mirrored, loud], name="two_engines")


def expected_row(word: str) -> dict[str, str]:
    shouted = f"{word.upper()}!"
    return {"loud": shouted, "mirrored": f"<{shouted}|{word}>"[::-1]}


def engines(log: Path | None = None, max_live: int = 1) -> EngineBroker:
    """Both engines as factories, one alive at a time (unless ``max_live`` says more)."""
    where = None if log is None else str(log)
    return EngineBroker(
        {
            "upper": functools.partial(ScriptedEngine, "upper", log=where),
            "reverse": functools.partial(ScriptedEngine, "reverse", log=where),
        },
        max_live=max_live,
    )


def inputs(rejected: Collection[int] = ()) -> dict[str, Any]:
    return {"word": iter(WORDS), "rejected": frozenset(WORDS[i] for i in rejected)}


def check_rows(rows: list[Any], rejected: Collection[int]) -> None:
    """Every row exactly: the reply of both engines, or the item's own failure in ``loud``."""
    assert len(rows) == N
    for i, got in enumerate(rows):
        if i in rejected:
            assert isinstance(got, ItemFailure), f"item {i}: {got!r}"
            assert (got.index, got.node) == (i, "loud"), f"item {i}: {got!r}"
            assert str(got.error) == f"w{i} is rejected"
            assert got.inputs == {"word": WORDS[i]}
        else:
            assert got == expected_row(WORDS[i]), f"item {i}"


# -- the runners ---------------------------------------------------------------------------

_DASK: dict[str, Any] = {}


def dask_client() -> Any:
    """One ``LocalCluster`` for the module: 2 worker processes of 2 threads each."""
    if "client" not in _DASK:
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        _DASK["cluster"], _DASK["client"] = cluster, distributed.Client(cluster)
    return _DASK["client"]


@pytest.fixture(scope="module", autouse=True)
def _close_dask() -> Iterator[None]:
    yield
    if "client" in _DASK:
        _DASK.pop("client").close()
        _DASK.pop("cluster").close()


def _map_of(runner: Any) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        out = runner.map(*args, **kwargs)
        return asyncio.run(out) if asyncio.iscoroutine(out) else out

    return run


# Daft 0.7.26 never closes the stdout pipe of a UDF process it has torn down
DAFT_UDF_PIPE = pytest.mark.filterwarnings(
    r"ignore:unclosed file <_io\.(BufferedReader|FileIO):ResourceWarning"
)
RUNNERS: dict[str, Callable[..., Any]] = {
    "Runner": lambda **kw: Runner(**kw),
    "Runner-4-workers": lambda **kw: Runner(max_workers=4, **kw),
    "AsyncRunner": lambda **kw: AsyncRunner(**kw),
    "DaskRunner": lambda **kw: DaskRunner(dask_client(), **kw),
    "DaftRunner": lambda **kw: DaftRunner(**kw),
}
LOCAL = ["Runner", "Runner-4-workers", "AsyncRunner"]


@contextlib.contextmanager
def mapper(kind: str, **kw: Any) -> Iterator[Callable[..., Any]]:
    if kind == "DaftRunner":
        pytest.importorskip("daft")
    runner = RUNNERS[kind](**kw)
    try:
        yield _map_of(runner)
    finally:
        close = getattr(runner, "close", None)
        if close is not None and kind != "DaskRunner":  # the module's client stays open
            close()


# -- a batch that fails whole -----------------------------------------------------------------


@pytest.mark.parametrize("where", sorted(REJECTED))
@pytest.mark.parametrize("kind", LOCAL)
def test_a_batch_failing_whole_leaves_every_other_row_exact(kind: str, where: str) -> None:
    rejected = REJECTED[where]
    with mapper(kind, engines=engines()) as run:
        rows = run(GRAPH, inputs(rejected), map_over="word", batch_size=BATCH,
                   engine_window=WINDOW, on_error="collect")  # fmt: skip
    check_rows(rows, rejected)


@pytest.mark.parametrize(
    "kind",
    [pytest.param("DaskRunner", marks=pytest.mark.slow),
     pytest.param("DaftRunner", marks=(pytest.mark.slow, DAFT_UDF_PIPE))],
)  # fmt: skip
def test_remote_runners_keep_every_row_exact(kind: str) -> None:
    rejected = REJECTED["several-windows"]
    with mapper(kind, engines=engines()) as run:
        rows = run(GRAPH, inputs(rejected), map_over="word", batch_size=BATCH,
                   engine_window=WINDOW, on_error="collect")  # fmt: skip
    check_rows(rows, rejected)


@pytest.mark.parametrize("kind", LOCAL)
def test_each_prompt_is_asked_once_and_each_engine_starts_once_per_window(
    kind: str, tmp_path: Path
) -> None:
    log = tmp_path / "asked.jsonl"
    broker = engines(log)
    with mapper(kind, engines=broker) as run:
        rows = run(GRAPH, inputs(), map_over="word", batch_size=BATCH, engine_window=WINDOW)
    check_rows(rows, set())
    asked = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert sorted(asked) == sorted(
        [("upper", f"{w}!") for w in WORDS] + [("reverse", f"<{w.upper()}!|{w}>") for w in WORDS]
    )
    status = broker.status()
    assert status["upper"]["starts"] == status["reverse"]["starts"] == 3  # ceil(120 / 50)


def test_on_error_raise_stops_at_the_first_failure_naming_node_and_item() -> None:
    with pytest.raises(NodeError, match=r"node 'loud' for item 20 failed") as caught:
        Runner(engines=engines()).map(
            GRAPH, inputs({20, 21}), map_over="word", batch_size=BATCH, engine_window=WINDOW
        )
    assert (caught.value.node, caught.value.index) == ("loud", 20)


def test_batches_are_reported_once_each_in_input_order_and_imap_streams_them() -> None:
    events: list[Any] = []
    rejected = REJECTED["several-windows"]
    runner = Runner(engines=engines(), callbacks=[events.append])
    rows = list(runner.imap(GRAPH, inputs(rejected), map_over="word", batch_size=BATCH,
                            engine_window=WINDOW, on_error="collect"))  # fmt: skip
    check_rows(rows, rejected)
    batches = [e for e in events if isinstance(e, BatchFinished)]
    assert [(b.start, b.n_items) for b in batches] == [(i, BATCH) for i in range(0, N, BATCH)]
    assert [b.n_failed for b in batches] == [
        sum(i in rejected for i in range(at, at + BATCH)) for at in range(0, N, BATCH)
    ]
    (end,) = [e for e in events if isinstance(e, MapFinished)]
    assert (end.n_items, end.n_failed) == (N, len(rejected))


@pytest.mark.parametrize("order", [(1, 2), (2, 1)], ids=["segmented-first", "plain-first"])
def test_cache_keys_cross_segments_as_the_values_do(order: tuple[int, int], tmp_path: Path) -> None:
    """A map in segments (``max_live=1``) and one without (``max_live=2``) make the same
    keys: whichever runs second is answered by the cache alone."""
    log = tmp_path / "asked.jsonl"
    cache = MemoryCache()
    kwargs = dict(map_over="word", batch_size=BATCH, engine_window=WINDOW, on_error="collect")
    first, second = order
    check_rows(Runner(engines=engines(log, first), cache=cache).map(GRAPH, inputs({33}), **kwargs),
               {33})  # fmt: skip
    assert len(log.read_text().splitlines()) == 2 * (N - 1)
    log.write_text("")
    again = Runner(engines=engines(log, second), cache=cache).map(GRAPH, inputs({33}), **kwargs)
    check_rows(again, {33})
    assert log.read_text() == "", "every prompt was answered by the cache"


# -- with a writer: rows, resume, spills ----------------------------------------------------


@pytest.mark.parametrize("where", sorted(REJECTED))
def test_a_writer_gets_exact_rows_and_resume_completes_them(where: str, tmp_path: Path) -> None:
    rejected, out = REJECTED[where], tmp_path / "out"
    kwargs = dict(map_over="word", batch_size=BATCH, engine_window=WINDOW, on_error="collect")
    result = Runner(engines=engines()).map(GRAPH, inputs(rejected), writer=StreamWriter(out),
                                           **kwargs)  # fmt: skip
    assert (result.n_items, result.n_ok, result.n_failed) == (N, N - len(rejected), len(rejected))
    stored = list(read_jsonl(out))
    assert stored == [
        {"_index": i, "word": w, **expected_row(w)}
        for i, w in enumerate(WORDS)
        if i not in rejected
    ]
    errors = [json.loads(line) for p in sorted(out.glob("_errors/*.jsonl"))
              for line in p.read_text().splitlines()]  # fmt: skip
    assert [(e["_index"], e["node"], e["inputs"]) for e in errors] == [
        (i, "loud", {"word": WORDS[i]}) for i in sorted(rejected)
    ]
    again = Runner(engines=engines()).map(
        GRAPH, inputs(), writer=StreamWriter(out, resume=True), **kwargs
    )  # the failed items are computed again, and now pass
    assert (again.n_skipped, again.n_items, again.n_failed) == (N - len(rejected), len(rejected), 0)
    assert sorted(list(read_jsonl(out)), key=lambda r: r["_index"]) == [
        {"_index": i, "word": w, **expected_row(w)} for i, w in enumerate(WORDS)
    ]


@node(output_name="seen")
def seen(mirrored: str, spill_dir: str) -> int:
    """A plain node of the second segment: how many spill files exist while it runs."""
    folder = Path(spill_dir)
    return len(list(folder.iterdir())) if folder.is_dir() else -1


def test_spills_live_under_the_output_folder_and_go_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_spill").mkdir(parents=True)
    (out / "_spill" / "stale.arrow").write_bytes(b"left by a killed run")
    graph = Graph([loud, mirrored, seen], name="two_engines")
    result = Runner(engines=engines()).map(
        graph,
        {**inputs(), "spill_dir": str(out / "_spill")},
        map_over="word",
        batch_size=BATCH,
        engine_window=WINDOW,
        writer=StreamWriter(out, resume=True),
    )
    assert result.n_ok == N
    rows = list(read_jsonl(out))
    assert {r["seen"] for r in rows} == {1}, "the window's spill, under the output folder"
    assert not (out / "_spill").exists()
    assert sorted(p.name for p in out.iterdir()) == ["000.jsonl", "_manifest.json", "_writer.lock"]


def test_without_a_writer_spills_go_to_a_temporary_folder_removed_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    rows = Runner(engines=engines()).map(
        GRAPH, inputs(), map_over="word", batch_size=BATCH, engine_window=WINDOW
    )
    check_rows(rows, set())
    assert list(tmp.iterdir()) == []


# -- values that cross a segment ------------------------------------------------------------


def test_an_output_model_declared_in_a_function_crosses_segments() -> None:
    pydantic = pytest.importorskip("pydantic")
    pytest.importorskip("cloudpickle")

    class Shout(pydantic.BaseModel):  # local: the standard pickle cannot find it by name
        text: str
        words: int

    @llm_node(engine="upper", output_name="shout", output_model=Shout)
    def shout(word: str) -> str:
        return f"{word} now"

    @llm_node(engine="reverse", output_name="back")
    def back(shout: Shout) -> str:
        return shout.text

    rows = Runner(engines=engines()).map(
        Graph([shout, back]), {"word": WORDS}, map_over="word", batch_size=BATCH,
        engine_window=WINDOW,
    )  # fmt: skip
    assert rows == [
        {"shout": Shout(text=f"{w.upper()} NOW", words=2), "back": f"{w.upper()} NOW"[::-1]}
        for w in WORDS
    ]
    assert all(type(r["shout"]) is Shout for r in rows)


@node(output_name="handle")
def handle(loud: str) -> Any:
    """A value no pickler can spill for item 7 (a lock), a plain one for the others."""
    return threading.Lock() if loud == "W7!" else loud.lower()


@llm_node(engine="reverse", output_name="echo")
def echo(handle: Any) -> str:
    return str(handle)


def test_a_value_that_cannot_be_spilled_fails_its_item_naming_node_and_index() -> None:
    graph = Graph([loud, handle, echo])
    rows = Runner(engines=engines()).map(
        graph, inputs(), map_over="word", output_name="echo", batch_size=BATCH,
        engine_window=WINDOW, on_error="collect",
    )  # fmt: skip
    failure = rows[7]
    assert isinstance(failure, ItemFailure)
    assert (failure.index, failure.node) == (7, "handle")
    assert "cannot be spilled" in str(failure.error) and "item 7" in str(failure.error)
    assert rows[:7] + rows[8:] == [{"echo": f"w{i}!"[::-1]} for i in range(N) if i != 7]
    with pytest.raises(NodeError, match=r"node 'handle' for item 7") as caught:
        Runner(engines=engines()).map(
            graph, inputs(), map_over="word", output_name="echo", batch_size=BATCH,
            engine_window=WINDOW,
        )  # fmt: skip
    assert "cannot be spilled" in str(caught.value)


# -- batches in flight --------------------------------------------------------------------------


class Rendezvous:
    """Batches of one segment meet here: each one entering marks itself in ``folder`` and
    waits until ``want`` are in at once (or ``patience`` seconds pass: then it says so);
    ``peak`` is the most that were ever in at once."""

    def __init__(self, folder: Path, want: int, patience: float = 20.0) -> None:
        self.folder, self.want, self.patience = folder, want, patience
        folder.mkdir(parents=True, exist_ok=True)

    def meet(self) -> None:
        mine = self.folder / f"in-{uuid.uuid4().hex}"
        mine.touch()
        try:
            poll_until(self._met, self.patience)  # the others' marks are what it waits for
            (self.folder / "met").touch()  # met (or out of patience): the others go on too
        finally:
            mine.unlink()

    def _met(self) -> bool:
        if (self.folder / "met").exists():
            return True
        inside = len(list(self.folder.glob("in-*")))
        with open(self.folder / "counts", "a") as f:
            f.write(f"{inside}\n")
        return inside >= self.want

    @property
    def peak(self) -> int:
        counts = (self.folder / "counts").read_text().split()
        return max(int(c) for c in counts)


@node(output_name="marked", batch=True)
def marked(word: list[str], meeting: Rendezvous) -> list[str]:
    meeting.meet()  # once per batch: in the first segment, beside the first engine
    return word


@llm_node(engine="upper", output_name="loud")
def loud_marked(marked: str) -> str:
    return f"{marked}!"


MARKED = Graph([marked, loud_marked, mirrored], name="two_engines")


@pytest.mark.parametrize(
    ("kind", "want"),
    [("Runner", 2), ("AsyncRunner", 2), pytest.param("DaskRunner", 4, marks=pytest.mark.slow)],
)
def test_batches_of_a_segment_are_in_flight_together(kind: str, want: int, tmp_path: Path) -> None:
    meeting = Rendezvous(tmp_path / "meeting", want)
    options: dict[str, Any] = {"engines": engines()}
    if kind == "DaskRunner":
        options["max_in_flight"] = 4  # and the cluster has 4 worker threads
    with mapper(kind, **options) as run:
        rows = run(MARKED, {"word": WORDS, "meeting": meeting}, map_over="word",
                   output_name=["loud", "mirrored"], batch_size=BATCH,
                   engine_window=WINDOW)  # fmt: skip
    check_rows(rows, set())
    assert meeting.peak >= want, f"{meeting.peak} batches were in flight at once, not {want}"
