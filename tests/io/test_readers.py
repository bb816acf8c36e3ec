"""Readers: jsonl, parquet and csv from a file or a folder of shards, lazily."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hypernodes_chain.io import (
    Column,
    CsvReader,
    JsonlReader,
    ParquetReader,
    StreamWriter,
    read_csv,
    read_jsonl,
    read_parquet,
)

RECORDS = [{"id": i, "text": f"row {i}", "score": i / 4} for i in range(10)]


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, records: list[dict], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def write_folder(folder: Path, fmt: str, n: int, max_lines: int) -> Path:
    writer = StreamWriter(folder, format=fmt, max_lines_per_file=max_lines)
    writer.open(graph_name="g", input_names=["text"], output_names=["n"])
    writer.write_batch([(i, {"text": f"t{i}"}, {"n": i}) for i in range(n)], [])
    writer.close()
    return folder


READERS = {"jsonl": (read_jsonl, write_jsonl), "parquet": (read_parquet, write_parquet)}


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_round_trip_from_a_file(tmp_path: Path, fmt: str) -> None:
    read, write = READERS[fmt]
    reader = read(write(tmp_path / f"data.{fmt}", RECORDS))
    assert list(reader) == RECORDS
    assert list(reader) == RECORDS  # iterable again, read again from disk
    assert len(reader) == 10
    assert reader.files == [tmp_path / f"data.{fmt}"]


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_round_trip_from_a_writer_folder(tmp_path: Path, fmt: str) -> None:
    read, _ = READERS[fmt]
    folder = write_folder(tmp_path / "out", fmt, n=25, max_lines=10)
    (folder / "errors").mkdir(exist_ok=True)
    (folder / "errors" / "000.jsonl").write_text('{"_index": 99}\n')
    reader = read(folder)
    assert [r["_index"] for r in reader] == list(range(25))
    assert next(iter(reader)) == {"_index": 0, "text": "t0", "n": 0}
    assert len(reader) == 25
    assert [p.name for p in reader.files] == [f"00{i}.{fmt}" for i in range(3)]


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_folder_with_manifest_skips_uncommitted_shards(tmp_path: Path, fmt: str) -> None:
    read, write = READERS[fmt]
    folder = write_folder(tmp_path / "out", fmt, n=5, max_lines=10)
    write(folder / f"001.{fmt}", [{"_index": 7, "text": "ghost", "n": 7}])  # never committed
    (folder / f".002.{fmt}.tmp").write_bytes(b"torn")
    assert [r["_index"] for r in read(folder)] == [0, 1, 2, 3, 4]


def test_plain_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    for i in (10, 9, 1000, 2):
        write_jsonl(tmp_path / f"part{i}.jsonl", [{"i": i}])
    write_jsonl(tmp_path / ".hidden.jsonl", [{"i": -1}])
    (tmp_path / ".003.jsonl.tmp").write_text('{"i": -2}\n')
    (tmp_path / "notes.txt").write_text("not a shard")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "x.jsonl", [{"i": -3}])
    assert [r["i"] for r in read_jsonl(tmp_path)] == [2, 9, 10, 1000]


def test_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n{"a": \n')
    reader = read_jsonl(path)
    assert len(reader) == 3
    with pytest.raises(ValueError, match=r"a\.jsonl:5: not a JSON line"):
        list(reader)
    assert list(islice(reader, 2)) == [{"a": 1}, {"a": 2}]


def test_column_yields_one_field_with_the_readers_length(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    texts = read_jsonl(path).column("text")
    assert isinstance(texts, Column)
    assert list(texts) == [f"row {i}" for i in range(10)]
    assert len(texts) == 10
    with pytest.raises(KeyError, match="field 'nope' is missing"):
        list(read_jsonl(path).column("nope"))


def test_parquet_column_and_columns_read_only_those(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", RECORDS)
    assert list(read_parquet(path).column("score"))[:3] == [0.0, 0.25, 0.5]
    assert list(read_parquet(path, columns=["id"]))[:2] == [{"id": 0}, {"id": 1}]
    with pytest.raises(KeyError, match="'nope' is not a column"):
        list(read_parquet(path).column("nope"))


def test_parquet_column_with_a_dotted_name(tmp_path: Path) -> None:
    writer = StreamWriter(tmp_path / "out", format="parquet")
    writer.open(graph_name="g", input_names=["x"], output_names=["s"])
    writer.write_batch([(i, {"x": i}, {"s": {"title": f"t{i}"}}) for i in range(3)], [])
    writer.close()
    assert list(read_parquet(tmp_path / "out").column("s.title")) == ["t0", "t1", "t2"]


def test_parquet_len_comes_from_metadata(tmp_path: Path) -> None:
    for i in range(3):
        write_parquet(tmp_path / f"{i}.parquet", RECORDS)
    reader = read_parquet(tmp_path, batch_size=4)
    assert len(reader) == 30
    assert [r["id"] for r in reader] == list(range(10)) * 3


def test_read_csv_streams_string_records(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('id,text\n1,hello\n2,"two\nlines"\n3,"a, b"\n')
    reader = read_csv(path)
    assert isinstance(reader, CsvReader)
    assert list(reader) == [
        {"id": "1", "text": "hello"},
        {"id": "2", "text": "two\nlines"},
        {"id": "3", "text": "a, b"},
    ]
    assert len(reader) == 3
    assert list(read_csv(path, converters={"id": int}).column("id")) == [1, 2, 3]


def test_read_csv_folder_and_format_options(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("x;y\n3;4\n")
    (tmp_path / "a.csv").write_text("x;y\n1;2\n")
    reader = read_csv(tmp_path, delimiter=";", converters={"x": int})
    assert list(reader) == [{"x": 1, "y": "2"}, {"x": 3, "y": "4"}]


def test_missing_and_empty_paths_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=r"holds no \.parquet or \.pq files"):
        read_parquet(tmp_path)


def test_writer_folder_read_with_the_other_format_raises(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "out", "jsonl", n=3, max_lines=10)
    with pytest.raises(FileNotFoundError, match=r"holds no \.parquet"):
        read_parquet(folder)


def test_readers_repr_and_types(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    assert isinstance(read_jsonl(path), JsonlReader)
    assert repr(read_jsonl(path)) == f"JsonlReader({str(path)!r}, files=1)"
    assert isinstance(read_parquet(write_parquet(tmp_path / "a.parquet", RECORDS)), ParquetReader)


# -- laziness: a big input is never held in memory -------------------------------------

# The peak of Python allocations while reading is a few tens of kB (jsonl: one line and one dict
# at a time) or one read batch of dicts (parquet), whatever the file's size. So the files are
# kept small (a few MB of rows as dicts, cheap to write and to read under tracemalloc) and the
# bounds tight: a tenth of what holding all rows would take.
BIG = 20_000
ROW = {"text": "x" * 100, "n": 0}


def peak_while_reading(reader: Iterable[dict], stop: int | None = None) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in islice(reader, stop))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def all_rows_size(n: int) -> int:
    """Bytes that ``n`` rows held as dicts take, measured the same way as a reader's peak
    (a lower bound: these rows share one ``text`` string, rows read from a file do not)."""
    tracemalloc.start()
    try:
        rows = [{**ROW, "n": i} for i in range(n)]
        size = tracemalloc.get_traced_memory()[0]
        del rows
        return size
    finally:
        tracemalloc.stop()


def test_jsonl_reading_is_lazy(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps({**ROW, "n": i}) + "\n" for i in range(BIG))
    size = path.stat().st_size
    assert size > 2_000_000
    count, peak = peak_while_reading(read_jsonl(path))
    assert count == BIG
    assert peak < min(size, all_rows_size(BIG)) / 10  # not the file, nor its rows, held


def test_parquet_reading_is_lazy(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string()), ("n", pa.int64())])) as w:
        for start in range(0, BIG, 5_000):  # 4 row groups
            rows = [{**ROW, "n": i} for i in range(start, start + 5_000)]
            w.write_table(pa.Table.from_pylist(rows, schema=w.schema))
    count, peak = peak_while_reading(read_parquet(path, batch_size=500))
    assert count == BIG
    assert peak < all_rows_size(BIG) / 10  # < half a row group of dicts: batches, not groups


def test_reading_stops_early_without_reading_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\nnot json at all\n')
    assert list(islice(read_jsonl(path), 2)) == [{"a": 1}, {"a": 2}]


def test_read_csv_row_with_missing_fields_raises(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("id,text,score\n1,good,5\n\n2,bad\n3,ok,4\n")
    records = iter(read_csv(path))
    assert next(records) == {"id": "1", "text": "good", "score": "5"}
    with pytest.raises(ValueError) as info:
        next(records)
    message = str(info.value)
    assert message.startswith(f"{path} line 4: 2 fields, the header has 3 (missing 'score')")
    assert "header: id, text, score" in message
    with pytest.raises(ValueError, match="line 4"):
        list(read_csv(path).column("id"))


def test_read_csv_row_with_extra_fields_raises(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('id,text\n1,"two\nlines"\n2,b,x,"y"\n')
    with pytest.raises(ValueError) as info:
        list(read_csv(path))
    message = str(info.value)
    assert message.startswith(f"{path} line 4: 4 fields, the header has 2 (extra: 'x', 'y')")
    assert "header: id, text" in message


def test_read_csv_mismatch_in_a_map_stops_it_after_committing(tmp_path: Path) -> None:
    from hypernodes_chain import Graph, Runner, node

    @node(output_name="n")
    def length(text: str) -> int:
        return len(text)

    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in range(5)) + "5\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="line 7: 1 fields, the header has 2"):
        Runner().map(
            Graph([length]),
            {"text": read_csv(path).column("text")},
            map_over="text",
            batch_size=2,
            writer=StreamWriter(out, max_lines_per_file=2),
        )
    assert sorted(r["_index"] for r in read_jsonl(out)) == [0, 1, 2, 3]


def test_read_csv_blank_lines_len_and_explicit_dictreader_options(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("\nx,y\n\n1,2\n\n3\n4,5,6\n")
    assert len(read_csv(tmp_path / "a.csv", restval="-", restkey="more")) == 3
    assert list(read_csv(path, restval="-", restkey="more")) == [
        {"x": "1", "y": "2"},
        {"x": "3", "y": "-"},
        {"x": "4", "y": "5", "more": ["6"]},
    ]
    (tmp_path / "b.csv").write_text("1;2\n\n3;4\n")
    headless = read_csv(tmp_path / "b.csv", fieldnames=["x", "y"], delimiter=";")
    assert list(headless) == [{"x": "1", "y": "2"}, {"x": "3", "y": "4"}]
    assert len(headless) == 2
