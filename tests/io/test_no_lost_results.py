"""Regression tests: a map's output folder never loses, duplicates or mixes a result.

Ctrl-C inside the writer, a second writer on the folder, damaged shards, code edited
between runs, failed items, values that do not fit the format. Each test runs a real map
into a real folder and reads it back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hypernodes_chain import (
    Graph,
    ItemFailure,
    ResumeError,
    ResumeWarning,
    Runner,
    WriterLockedError,
    node,
)
from hypernodes_chain.io import StreamWriter, read_jsonl, read_parquet
from hypernodes_chain.io._signals import deferred_interrupts

FORMATS = ["jsonl", "parquet"]
STATE: dict[str, Any] = {}  # switches the nodes below read (their code stays the same)


def rows(out: Path, fmt: str) -> list[dict[str, Any]]:
    return list(read_parquet(out) if fmt == "parquet" else read_jsonl(out))


def error_records(out: Path) -> list[dict[str, Any]]:
    folder = out / "_errors"
    if not folder.is_dir():
        return []
    return [
        json.loads(line) for p in sorted(folder.iterdir()) for line in p.read_text().splitlines()
    ]


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "_manifest.json").read_text())


def assert_each_index_once(out: Path, fmt: str, n: int) -> None:
    seen = Counter(r["_index"] for r in rows(out, fmt))
    seen.update(r["_index"] for r in error_records(out))
    assert sorted(seen) == list(range(n)), "lost items"
    assert max(seen.values()) == 1, "duplicated items"


# -- 1, 2: Ctrl-C inside the writer ---------------------------------------------------


class Interrupting:
    """A value whose JSON form sends a real SIGINT while the writer encodes it."""

    def __init__(self, value: int) -> None:
        self.value = value

    def tolist(self) -> int:
        if STATE.get("interrupt_at") == self.value:
            signal.raise_signal(signal.SIGINT)
        return self.value


@node(output_name="y")
def wrap(x: int) -> Interrupting:
    return Interrupting(x)


def test_ctrl_c_while_a_jsonl_batch_is_encoded_loses_nothing(tmp_path: Path) -> None:
    """Item 1: indices were recorded before the lines were encoded."""
    out, graph = tmp_path / "out", Graph(nodes=[wrap])
    STATE["interrupt_at"] = 1_700
    try:
        with pytest.raises(KeyboardInterrupt):
            Runner().map(graph, {"x": range(3_000)}, map_over="x", batch_size=500,
                         writer=StreamWriter(out, max_lines_per_file=1_000))  # fmt: skip
    finally:
        STATE.clear()
    assert manifest(out)["finished"] is False
    stored = sorted(r["_index"] for r in rows(out, "jsonl"))
    listed = sorted(i for s in manifest(out)["shards"] for a, b in s["ranges"] for i in range(a, b))
    assert stored == listed  # the manifest lists exactly the rows the shards hold
    result = Runner().map(graph, {"x": range(3_000)}, map_over="x", batch_size=500,
                          writer=StreamWriter(out, max_lines_per_file=1_000, resume=True))  # fmt: skip
    assert result.n_skipped == len(stored) > 0
    assert_each_index_once(out, "jsonl", 3_000)
    assert [r["y"] for r in rows(out, "jsonl")] == list(range(3_000))


def test_deferred_interrupts_delivers_the_signal_after_the_block() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        signal.raise_signal(signal.SIGINT)
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_commit_that_fails_changes_nothing(tmp_path: Path, fmt: str) -> None:
    """Item 2: a commit is all or nothing (here the data shard cannot be renamed)."""
    out = tmp_path / "out"
    writer = StreamWriter(out, format=fmt, max_lines_per_file=10)
    writer.open(graph_name="g", input_names=["x"], output_names=["y"])
    failure = ItemFailure.from_exception(3, "f", ValueError("bad"))
    (out / f"000.{fmt}").mkdir()  # blocks the rename of the first data shard
    with pytest.raises(OSError):
        writer.write_columns([0, 1, 2, 4, 5, 6, 7, 8, 9, 10], {"x": list(range(10))},
                             {"y": list(range(10))}, [failure])  # fmt: skip
    assert manifest(out)["shards"] == [] and manifest(out)["errors"] == []
    assert not list((out / "_errors").glob("*.jsonl"))  # the error shard was taken back
    (out / f"000.{fmt}").rmdir()
    writer.write_columns([11], {"x": [11]}, {"y": [11]}, [])
    writer.close()
    indices = Counter(r["_index"] for r in rows(out, fmt))
    indices.update(r["_index"] for r in error_records(out))
    assert sorted(indices) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert max(indices.values()) == 1


# -- 3: one writer per folder ---------------------------------------------------------


HOLDER = """
import sys, time
from hypernodes_chain.io import StreamWriter
w = StreamWriter(sys.argv[1])
w.open(graph_name="g", input_names=["x"], output_names=["y"])
print("open", flush=True)
time.sleep(60)
"""


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = StreamWriter(out)
    first.open(graph_name="g", input_names=["x"], output_names=["y"])
    second = StreamWriter(out, resume=True)
    t0 = time.perf_counter()
    with pytest.raises(WriterLockedError, match=rf"held by pid {os.getpid()} on "):
        second.open(graph_name="g", input_names=["x"], output_names=["y"])
    assert time.perf_counter() - t0 < 2
    first.write_columns([0], {"x": [0]}, {"y": [0]}, [])
    first.close()
    assert rows(out, "jsonl") == [{"_index": 0, "x": 0, "y": 0}]
    third = StreamWriter(out, resume=True)  # the lock is free again
    third.open(graph_name="g", input_names=["x"], output_names=["y"])
    third.close()


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(WriterLockedError, match=rf"held by pid {proc.pid} .*{out.name}"):
            StreamWriter(out, resume=True).open(graph_name="g", input_names=["x"],
                                                output_names=["y"])  # fmt: skip
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    writer = StreamWriter(out, resume=True)  # the dead holder's lock is stale: taken over
    writer.open(graph_name="g", input_names=["x"], output_names=["y"])
    writer.close()


# -- 4: damaged shards ----------------------------------------------------------------


@node(output_name="y")
def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_redoes_garbled_and_truncated_shards(tmp_path: Path, fmt: str) -> None:
    out, graph = tmp_path / "out", Graph(nodes=[double])

    def run() -> Any:
        writer = StreamWriter(out, format=fmt, max_lines_per_file=100, resume=True)
        return Runner().map(graph, {"x": range(500)}, map_over="x", writer=writer)

    run()
    garbled, truncated = out / f"001.{fmt}", out / f"003.{fmt}"
    data = bytearray(garbled.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    garbled.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.warns(ResumeWarning) as caught:
        result = run()
    messages = sorted(str(w.message) for w in caught)
    assert "checksum does not match" in messages[0] and garbled.name in messages[0]
    assert "bytes, the manifest says" in messages[1] and truncated.name in messages[1]
    assert (result.n_items, result.n_skipped) == (200, 300)
    assert_each_index_once(out, fmt, 500)
    assert sorted(r["y"] for r in rows(out, fmt)) == [2 * i for i in range(500)]


# -- 5: code edited between runs ------------------------------------------------------


@node(name="step", output_name="y")
def step_v1(x: int) -> str:
    return f"v1:{x}"


@node(name="step", output_name="y")
def step_v2(x: int) -> str:
    return f"v2:{x}"


def test_resume_with_edited_code_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    Runner().map(Graph(nodes=[step_v1]), {"x": range(100)}, map_over="x", batch_size=10,
                 writer=StreamWriter(out, max_lines_per_file=40))  # fmt: skip
    (out / "000.jsonl").unlink()  # some items to do again
    with pytest.raises(ResumeError, match=r"code of node 'step' changed"):
        Runner().map(Graph(nodes=[step_v2]), {"x": range(100)}, map_over="x",
                     writer=StreamWriter(out, max_lines_per_file=40, resume=True))  # fmt: skip
    assert (out / "001.jsonl").read_text().count('"v1:') == 40  # untouched
    with pytest.warns(ResumeWarning):
        result = Runner().map(Graph(nodes=[step_v2]), {"x": range(100)}, map_over="x",
                              writer=StreamWriter(out, resume="force"))  # fmt: skip
    assert result.n_items == 40
    versions = Counter(r["y"].split(":")[0] for r in rows(out, "jsonl"))
    assert versions == {"v1": 60, "v2": 40}
    assert_each_index_once(out, "jsonl", 100)


# -- 8: failures are retried, and can be reproduced -----------------------------------


@node(output_name="y")
def flaky(x: int, text: str) -> int:
    if x in STATE.get("failing", ()):
        raise ValueError(f"cannot take {x}")
    return x


def test_resume_computes_failed_items_again_with_their_inputs_recorded(tmp_path: Path) -> None:
    out, graph = tmp_path / "out", Graph(nodes=[flaky])
    inputs = {"x": range(1_000), "text": ["t" * (5_000 if i == 7 else 3) for i in range(1_000)]}
    STATE["failing"] = {7, 500}
    try:
        first = Runner().map(graph, inputs, map_over=["x", "text"], on_error="collect",
                             writer=StreamWriter(out, max_lines_per_file=300))  # fmt: skip
    finally:
        STATE.clear()
    assert (first.n_items, first.n_ok, first.n_failed) == (1_000, 998, 2)
    records = error_records(out)
    assert [r["_index"] for r in records] == [7, 500]
    assert records[1]["inputs"] == {"x": 500, "text": "ttt"}
    long_text = records[0]["inputs"]["text"]
    assert long_text.startswith('"tttt') and long_text.endswith("[truncated: 5,002 characters]")

    again = Runner().map(graph, inputs, map_over=["x", "text"], on_error="collect",
                         writer=StreamWriter(out, max_lines_per_file=300, resume=True))  # fmt: skip
    assert (again.n_items, again.n_ok, again.n_failed, again.n_skipped) == (2, 2, 0, 998)
    assert (again.total_ok, again.total_failed, again.total_items) == (1_000, 0, 1_000)
    assert error_records(out) == []
    assert sorted(r["y"] for r in rows(out, "jsonl")) == list(range(1_000))


def test_failures_in_a_returned_list_carry_their_inputs() -> None:
    STATE["failing"] = {1}
    try:
        result = Runner().map(Graph(nodes=[flaky]), {"x": [0, 1], "text": ["a", "b"]},
                              map_over=["x", "text"], on_error="collect")  # fmt: skip
    finally:
        STATE.clear()
    assert isinstance(result[1], ItemFailure)
    assert result[1].inputs == {"x": 1, "text": "b"}


# -- 9, 10: values that do not fit the format -----------------------------------------


@node(output_name="score")
def score(x: int) -> Any:
    if x == 1_234:
        return "oops"
    if x == 2_000:
        return float("nan")
    return x / 2


def test_a_misfit_parquet_value_fails_only_its_item(tmp_path: Path) -> None:
    out, graph = tmp_path / "out", Graph(nodes=[score])
    for _ in range(2):  # the first run, then a resume: the bad item fails again, alone
        result = Runner().map(graph, {"x": range(5_000)}, map_over="x", on_error="collect",
                              writer=StreamWriter(out, format="parquet", max_lines_per_file=1_000,
                                                  resume=True))  # fmt: skip
        [failure] = result.failures
        assert failure.index == 1_234 and failure.inputs == {"x": 1_234}
        assert isinstance(failure.error, TypeError)
        assert "parquet column 'score', item 1234: value 'oops' of type str" in str(failure.error)
        assert "double" in str(failure.error)
        assert result.total_ok == 4_999 and result.total_failed == 1
    table = pq.read_table(out)
    assert table.num_rows == 4_999
    assert_each_index_once(out, "parquet", 5_000)


def test_a_misfit_parquet_value_under_raise_keeps_the_rows_done(tmp_path: Path) -> None:
    out, graph = tmp_path / "out", Graph(nodes=[score])
    with pytest.raises(TypeError, match="item 1234"):
        Runner().map(graph, {"x": range(5_000)}, map_over="x",
                     writer=StreamWriter(out, format="parquet", max_lines_per_file=1_000))  # fmt: skip
    assert pq.read_table(out).num_rows >= 1_000
    stored = {r["_index"] for r in rows(out, "parquet")}
    assert 1_234 not in stored and set(range(1_000)) <= stored


def test_nan_in_jsonl_fails_its_item_instead_of_writing_invalid_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = Runner().map(Graph(nodes=[score]), {"x": range(1_990, 2_010)}, map_over="x",
                          on_error="collect", writer=StreamWriter(out))  # fmt: skip
    assert [f.index for f in result.failures] == [10]  # x == 2000
    assert "NaN or an infinity" in str(result.failures[0].error)
    for line in (out / "000.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))


def test_old_layout_is_migrated_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    Runner().map(Graph(nodes=[double]), {"x": range(10)}, map_over="x",
                 writer=StreamWriter(out, max_lines_per_file=4))  # fmt: skip
    meta = manifest(out)
    for entry in meta["shards"]:
        del entry["size"], entry["blake2b"]  # a manifest of the first layout
    del meta["fingerprints"]
    (out / "manifest.json").write_text(json.dumps(meta))
    (out / "_manifest.json").unlink()
    (out / "002.jsonl").unlink()
    with pytest.raises(FileExistsError, match="resume=True"):
        StreamWriter(out).open(graph_name="double", input_names=["x"], output_names=["y"])
    with pytest.warns(ResumeWarning, match="002.jsonl"):
        result = Runner().map(Graph(nodes=[double]), {"x": range(10)}, map_over="x",
                              writer=StreamWriter(out, max_lines_per_file=4, resume=True))  # fmt: skip
    assert result.n_items == 2 and not (out / "manifest.json").exists()
    assert_each_index_once(out, "jsonl", 10)
