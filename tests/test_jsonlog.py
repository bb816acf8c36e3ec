"""JsonLogCallback: one JSON line per event, in order, from real runs."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest

from hypernodes_chain import AsyncRunner, Callback, Graph, InterruptEvent, Runner, node
from hypernodes_chain.jsonlog import JsonLogCallback


@node(output_name="a")
def add_one(x: int) -> int:
    if x == 3:
        raise ValueError("bad item 3")
    return x + 1


@node(output_name="b")
def double(a: int) -> int:
    return a * 2


GRAPH = Graph([add_one, double], name="chain")


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list = []

    def on_event(self, event) -> None:
        self.events.append(event)


def parse(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_event_in_order():
    stream = io.StringIO()
    rec = Recorder()
    Runner(callbacks=[rec, JsonLogCallback(stream, get_time=lambda: 12.5)]).map(
        GRAPH, {"x": [0, 1, 2]}, map_over="x", batch_size=2
    )
    lines = parse(stream.getvalue())
    assert [line["event"] for line in lines] == [type(e).__name__ for e in rec.events]
    assert lines[0] == {
        "event": "MapStarted",
        "time": 12.5,
        "path": ["chain"],
        "graph": "chain",
        "total": 3,
        "batch_size": 2,
        "n_skipped": 0,
    }
    finished = lines[2]
    assert finished["event"] == "NodeFinished"
    assert isinstance(finished.pop("duration"), float)
    assert finished == {
        "event": "NodeFinished",
        "time": 12.5,
        "path": ["chain"],
        "node": "add_one",
        "cached": False,
        "index": None,
        "n_items": 2,
        "n_cached": 0,
        "n_failed": 0,
        "prompt_tokens": 0,  # a node that calls no engine
        "completion_tokens": 0,
        "batch": 0,  # the first item of the batch the event covers
    }
    assert list(lines[-1])[:3] == ["event", "time", "path"]
    assert lines[-1]["n_ok"] == 3


def test_time_is_unix_seconds_by_default():
    stream = io.StringIO()
    Runner(callbacks=[JsonLogCallback(stream)]).run(GRAPH, {"x": 1})
    times = [line["time"] for line in parse(stream.getvalue())]
    assert times == sorted(times)
    assert times[0] > 1.6e9


def test_exceptions_are_type_and_message():
    stream = io.StringIO()
    runner = Runner(callbacks=[JsonLogCallback(stream)])
    runner.map(GRAPH, {"x": [2, 3]}, map_over="x", on_error="collect")
    with pytest.raises(Exception, match="bad item 3"):
        runner.run(GRAPH, {"x": 3})
    lines = parse(stream.getvalue())
    failed = [line for line in lines if line["event"] == "NodeFailed"]
    assert [(f["node"], f["index"], f["error"]) for f in failed] == [
        ("add_one", 1, {"type": "ValueError", "message": "bad item 3"}),
        ("add_one", None, {"type": "ValueError", "message": "bad item 3"}),
    ]
    assert lines[-1]["event"] == "GraphFinished"
    assert lines[-1]["error"] == {"type": "ValueError", "message": "bad item 3"}
    map_finished = next(line for line in lines if line["event"] == "MapFinished")
    assert (map_finished["n_ok"], map_finished["n_failed"]) == (1, 1)


class Token:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return f"<{self.text}>"


def test_chunk_values_json_cannot_encode_are_strings():
    @node
    def tokens(text: str):
        for word in text.split():
            yield {"token": Token(word), "n": len(word)}

    stream = io.StringIO()
    Runner(callbacks=[JsonLogCallback(stream)]).run(Graph([tokens]), {"text": "a bc"})
    lines = parse(stream.getvalue())
    chunks = [line["chunk"] for line in lines if line["event"] == "StreamingChunkEvent"]
    assert chunks == [{"token": "<a>", "n": 1}, {"token": "<bc>", "n": 2}]


def test_interrupt_values_json_cannot_encode_are_strings():
    # built by hand: runners hand InterruptEvent to AsyncRunner.iter, not to callbacks
    stream = io.StringIO()
    cb = JsonLogCallback(stream, get_time=lambda: 1.0)
    loop = [1]
    loop.append(loop)  # circular: json.dumps raises ValueError, the value falls back to str()
    cb(InterruptEvent(("g",), "int-1", "approve", Token("draft"), "review", 4))
    cb(InterruptEvent(("g",), "int-2", "approve", loop, "review", None))
    first, second = parse(stream.getvalue())
    assert first == {
        "event": "InterruptEvent",
        "time": 1.0,
        "path": ["g"],
        "id": "int-1",
        "name": "approve",
        "value": "<draft>",
        "node": "review",
        "index": 4,
    }
    assert second["value"] == "[1, [...]]"


def test_a_path_is_appended_to_and_closed_after_each_run(tmp_path):
    path = tmp_path / "logs" / "events.jsonl"
    cb = JsonLogCallback(path)
    runner = Runner(callbacks=[cb])
    runner.run(GRAPH, {"x": 1})
    assert cb._stream is None  # closed at the end of the run
    n_run = len(parse(path.read_text()))
    runner.map(GRAPH, {"x": [1, 2]}, map_over="x")
    assert cb._stream is None
    lines = parse(path.read_text())
    assert len(lines) > n_run
    assert lines[n_run - 1]["event"] == "GraphFinished"
    assert lines[-1]["event"] == "MapFinished"
    with JsonLogCallback(str(path)) as again:
        Runner(callbacks=[again]).run(GRAPH, {"x": 1})
    assert len(parse(path.read_text())) == len(lines) + n_run


def test_close_after_a_run_that_raised(tmp_path):
    path = tmp_path / "events.jsonl"
    cb = JsonLogCallback(path)
    with pytest.raises(Exception, match="bad item 3"):
        Runner(callbacks=[cb]).map(GRAPH, {"x": [3]}, map_over="x")
    assert cb._stream is None  # MapFinished (with the error) closed the file
    lines = parse(path.read_text())
    assert [line["event"] for line in lines[-2:]] == ["NodeFailed", "MapFinished"]
    assert lines[-1]["error"]["type"] == "NodeError"
    cb.close()  # closing again is harmless
    assert cb._stream is None


def test_default_stream_is_the_current_stderr(capsys):
    Runner(callbacks=[JsonLogCallback()]).run(GRAPH, {"x": 1})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert parse(captured.err)[0]["event"] == "GraphStarted"


def test_async_runner():
    stream = io.StringIO()
    rec = Recorder()
    runner = AsyncRunner(callbacks=[rec, JsonLogCallback(stream)], max_concurrency=3)
    asyncio.run(runner.map(GRAPH, {"x": [0, 1, 2, 4]}, map_over="x", batch_size=2))
    lines = parse(stream.getvalue())
    assert [line["event"] for line in lines] == [type(e).__name__ for e in rec.events]
    assert lines[-1]["n_items"] == 4


def test_runs_in_many_threads_write_whole_lines():
    stream = io.StringIO()
    cb = JsonLogCallback(stream)
    runner = Runner(callbacks=[cb])

    def work() -> None:
        for x in range(20):
            runner.map(GRAPH, {"x": [x + 10, x + 100]}, map_over="x", batch_size=1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = parse(stream.getvalue())  # every line is whole JSON
    assert sum(line["event"] == "MapFinished" for line in lines) == 80
    per_map = len(lines) // 80
    assert per_map * 80 == len(lines)


def test_a_maps_failures_are_one_line_per_batch_not_per_item():
    @node
    def inv(x: int) -> float:
        return 1 / x

    stream = io.StringIO()
    xs = [0 if i % 3 == 0 else i for i in range(100)]  # 34 failures over 10 batches
    Runner(callbacks=[JsonLogCallback(stream)]).map(
        Graph([inv]), {"x": xs}, map_over="x", batch_size=10, on_error="collect"
    )
    lines = parse(stream.getvalue())
    failed = [line for line in lines if line["event"] == "NodeFailed"]
    assert len(failed) == 10, "one NodeFailed per batch"
    assert sum(f["n_items"] for f in failed) == 34
    assert [f["index"] for f in failed] == [0, 12, 21, 30, 42, 51, 60, 72, 81, 90]
    finished = [line for line in lines if line["event"] == "NodeFinished"]
    assert sum(f["n_failed"] for f in finished) == 34
