"""A map with a writer keeps only the first failures in memory; `MapResult.failures` reads
the rest back from ``_errors/``, in order, as `ItemFailure` records."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest

from hypernodes_chain import AsyncRunner, Graph, Runner, node
from hypernodes_chain.exceptions import RecordedError
from hypernodes_chain.io import StreamWriter
from hypernodes_chain.results import KEPT_FAILURES, Failures, ItemFailure, MapResult

N = 1_000
FAILED = list(range(0, N, 4))  # 250 failures: more than are kept in memory
_alive: list[weakref.ref[BaseException]] = []


class Tracked(ValueError):
    """An error that lets the test see whether anything still holds it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        _alive.append(weakref.ref(self))


@node(output_name="y")
def step(x: int) -> int:
    if x % 4 == 0:
        msg = f"item {x} is a multiple of 4"
        raise Tracked(msg)
    return x + 1


def run_map(kind: str, out: Path, fmt: str) -> MapResult:
    writer = StreamWriter(out, format=fmt, max_lines_per_file=64)  # type: ignore[arg-type]
    args: dict[str, Any] = {"map_over": "x", "writer": writer, "on_error": "collect"}
    graph, inputs = Graph([step]), {"x": range(N)}
    if kind == "async":
        result = asyncio.run(AsyncRunner().map(graph, inputs, batch_size=50, **args))
    else:
        result = Runner().map(graph, inputs, batch_size=50, **args)
    assert isinstance(result, MapResult)
    return result


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_every_failure_is_read_back_in_order_and_only_the_first_are_in_memory(
    tmp_path: Path, kind: str, fmt: str
) -> None:
    _alive.clear()
    result = run_map(kind, tmp_path / "out", fmt)
    failures = result.failures

    assert (result.n_items, result.n_failed, len(failures)) == (N, len(FAILED), len(FAILED))
    assert isinstance(failures, Failures)
    assert [f.index for f in failures.kept] == FAILED[:KEPT_FAILURES]
    got = [(f.index, f.node, f.error_type, f.message) for f in failures]
    assert got == [(i, "step", "Tracked", f"item {i} is a multiple of 4") for i in FAILED]
    assert all("Traceback" in f.traceback and f.inputs == {"x": f.index} for f in failures)
    # past the kept ones, the records come from the errors shards, not from memory
    assert isinstance(failures[0].error, Tracked)
    assert isinstance(failures[KEPT_FAILURES].error, RecordedError)
    on_disk = [
        json.loads(line)["_index"]
        for shard in sorted((tmp_path / "out" / "_errors").glob("*.jsonl"))
        for line in shard.read_text().splitlines()
    ]
    assert on_disk == FAILED
    # nothing holds the errors of the failures that are not kept (the result is alive)
    gc.collect()
    assert sum(ref() is not None for ref in _alive) == KEPT_FAILURES


def test_the_failures_index_slice_and_compare_like_a_list(tmp_path: Path) -> None:
    failures = run_map("sync", tmp_path / "out", "jsonl").failures
    listed = list(failures)

    assert failures and len(failures) == len(listed) == len(FAILED)
    assert failures[-1].index == FAILED[-1] and failures[-len(FAILED)].index == 0
    assert [f.index for f in failures[95:105]] == FAILED[95:105]
    assert [f.index for f in failures[::-50]] == FAILED[::-50]
    assert failures[120:120] == []
    assert [f.index for f in failures] == [f.index for f in listed]  # iterates again
    assert failures[:3] == listed[:3]  # the kept records are the same objects each time
    with pytest.raises(IndexError, match="failure 250 is out of range: the map recorded 250"):
        failures[len(FAILED)]
    assert repr(failures).startswith("Failures(250 records, 100 in memory, the rest in ")


def test_a_map_without_failures_has_an_empty_sequence(tmp_path: Path) -> None:
    result = Runner().map(
        Graph([step]), {"x": [1, 2, 3]}, map_over="x", writer=StreamWriter(tmp_path / "out")
    )
    assert isinstance(result, MapResult)
    assert not result.failures and list(result.failures) == [] and "failures=" not in repr(result)


def test_records_whose_shards_are_gone_say_so_and_the_kept_ones_remain(tmp_path: Path) -> None:
    failures = run_map("sync", tmp_path / "out", "jsonl").failures
    shutil.rmtree(tmp_path / "out" / "_errors")

    assert failures[KEPT_FAILURES - 1].index == FAILED[KEPT_FAILURES - 1]
    with pytest.raises(FileNotFoundError, match=r"no longer in .*_errors/00\d\.jsonl"):
        failures[KEPT_FAILURES]


def test_the_writer_does_not_hold_the_failures_it_does_not_keep(tmp_path: Path) -> None:
    writer = StreamWriter(tmp_path, max_lines_per_file=10_000)  # one shard: all pending
    writer.open(graph_name="g", input_names=["x"], output_names=["y"])
    _alive.clear()
    for first in range(0, 300, 30):
        batch = [
            ItemFailure.from_exception(i, "step", Tracked(f"bad {i}"))
            for i in range(first, first + 30)
        ]
        writer.write_columns([], {"x": []}, {"y": []}, batch)
        del batch
    gc.collect()
    assert sum(ref() is not None for ref in _alive) == KEPT_FAILURES  # before the commit
    result = writer.close()
    assert [f.message for f in result.failures] == [f"bad {i}" for i in range(300)]


def test_the_failures_reverse_in_one_pass(tmp_path: Path) -> None:
    failures = run_map("sync", tmp_path / "out", "jsonl").failures
    assert [f.index for f in reversed(failures)] == FAILED[::-1]
