"""Runner.map into StreamWriter end to end: what lands on disk, read back by our readers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from hypernodes_chain import AsyncRunner, Graph, Runner, node
from hypernodes_chain.io import StreamWriter, read_jsonl, read_parquet

READ = {"jsonl": read_jsonl, "parquet": read_parquet}


@dataclass
class Meta:
    source: str
    rank: int


@node
def summary(x: int) -> dict:
    if x == 13:
        raise ValueError("unlucky")
    return {"title": f"t{x}", "score": x / 2, "meta": {"even": x % 2 == 0}}


@node
def tagged(x: int) -> dict:
    return {"a": x} if x % 2 else {"b": str(x)}  # keys differ between items


@node
def described(x: int) -> Meta:
    return Meta(source=f"s{x}", rank=x)


def expected_row(x: int) -> dict:
    return {
        "_index": x, "x": x, "summary.title": f"t{x}", "summary.score": x / 2,
        "summary.meta.even": x % 2 == 0,
    }  # fmt: skip


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("runner", ["sync", "async"])
def test_flattened_rows_and_errors_on_disk(tmp_path, fmt, runner):
    writer = StreamWriter(tmp_path / "out", format=fmt, max_lines_per_file=25)
    kwargs = dict(map_over="x", writer=writer, on_error="collect", batch_size=8)
    if runner == "sync":
        result = Runner().map(Graph([summary]), {"x": range(60)}, **kwargs)
    else:
        result = asyncio.run(AsyncRunner().map(Graph([summary]), {"x": range(60)}, **kwargs))
    assert (result.n_items, result.n_ok, result.n_failed) == (60, 59, 1)
    assert [f.name for f in result.files] == [f"00{i}.{fmt}" for i in range(3)]
    rows = list(READ[fmt](tmp_path / "out"))
    assert rows == [expected_row(x) for x in range(60) if x != 13]
    errors = list(read_jsonl(tmp_path / "out" / "_errors"))
    assert [(e["_index"], e["node"], e["error_type"]) for e in errors] == [
        (13, "summary", "ValueError")
    ]


def test_dicts_with_differing_keys_and_dataclasses(tmp_path):
    result = Runner().map(
        Graph([tagged, described]), {"x": [1, 2, 3]}, map_over="x",
        writer=StreamWriter(tmp_path / "out", format="jsonl"),
    )  # fmt: skip
    assert result.n_ok == 3
    rows = list(read_jsonl(tmp_path / "out"))
    assert rows[0] == {
        "_index": 0,
        "x": 1,
        "tagged.a": 1,
        "described.source": "s1",
        "described.rank": 1,
    }
    assert rows[1] == {
        "_index": 1,
        "x": 2,
        "tagged.b": "2",
        "described.source": "s2",
        "described.rank": 2,
    }
