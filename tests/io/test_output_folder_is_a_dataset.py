"""A StreamWriter folder is itself a dataset: the usual readers, pointed at the folder (or its
shard glob), read exactly the data rows, never `_manifest.json` or the `_errors/` records.
And a folder in the old layout (`manifest.json`, `errors/`) resumes into the new one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.io import StreamWriter

N = 250
SHARD = 100
FAILED = {x for x in range(N) if x % 50 == 7}  # 5 failures: `_errors/` exists
DATA = set(range(N)) - FAILED  # 245 rows: 3 shards of 100, 100, 45
COLUMNS = {"_index", "x", "y", "z"}
OLD_LAYOUT = Path(__file__).parent.parent / "resources" / "old_layout_jsonl"


@node(output_name="y")
def double(x: int) -> int:
    return 2 * x


@node(output_name="z")
def label(x: int, y: int) -> str:
    if x % 50 == 7:
        raise ValueError(f"bad {x}")
    return f"v{y}"


def write(out: Path, fmt: str) -> Path:
    writer = StreamWriter(out, format=fmt, max_lines_per_file=SHARD)
    graph = Graph(nodes=[double, label], name="dataset")
    result = Runner().map(
        graph, inputs={"x": range(N)}, map_over="x", writer=writer, on_error="collect"
    )
    assert (result.n_ok, result.n_failed) == (len(DATA), len(FAILED))
    return out


@pytest.fixture(scope="module")
def parquet_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("parquet") / "out", "parquet")


@pytest.fixture(scope="module")
def jsonl_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("jsonl") / "out", "jsonl")


def assert_data_rows(columns: set[str], indices: list[int]) -> None:
    """Exactly the data rows: right count, each `_index` once, no manifest or error columns."""
    assert columns == COLUMNS
    assert len(indices) == len(DATA)
    assert set(indices) == DATA


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_layout_shards_manifest_and_errors(tmp_path: Path, fmt: str) -> None:
    out = write(tmp_path / "out", fmt)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    data = [f"{i:03d}.{fmt}" for i in range(3)]
    errors = [f for f in files if re.fullmatch(r"_errors/\d{3,}\.jsonl", f)]
    assert errors, files
    assert set(files) - {"_writer.lock"} == {*data, *errors, "_manifest.json"}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == data
    assert [s["rows"] for s in manifest["shards"]] == [100, 100, 45]
    records = [json.loads(line) for f in errors for line in (out / f).read_text().splitlines()]
    assert sorted(r["_index"] for r in records) == sorted(FAILED)


# -- parquet ---------------------------------------------------------------------------


def test_pandas_read_parquet_of_the_folder(parquet_out: Path) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(parquet_out)
    assert_data_rows(set(df.columns), df["_index"].tolist())


def test_pyarrow_dataset_of_the_folder(parquet_out: Path) -> None:
    table = ds.dataset(parquet_out).to_table()
    assert_data_rows(set(table.column_names), table.column("_index").to_pylist())


def test_pyarrow_read_table_of_the_folder(parquet_out: Path) -> None:
    table = pq.read_table(parquet_out)
    assert_data_rows(set(table.column_names), table.column("_index").to_pylist())


def test_polars_read_parquet_glob(parquet_out: Path) -> None:
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(f"{parquet_out}/*.parquet")
    assert_data_rows(set(df.columns), df["_index"].to_list())


def test_duckdb_from_parquet_glob(parquet_out: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rel = duckdb.sql(f"from '{parquet_out}/*.parquet'")
    assert_data_rows(set(rel.columns), [row[0] for row in rel.select("_index").fetchall()])


def test_hf_datasets_load_dataset_of_the_folder(parquet_out: Path) -> None:
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(parquet_out))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert_data_rows(set(train.column_names), list(train["_index"]))


# -- jsonl -----------------------------------------------------------------------------


def test_pyarrow_json_dataset_of_the_folder(jsonl_out: Path) -> None:
    table = ds.dataset(jsonl_out, format="json").to_table()
    assert_data_rows(set(table.column_names), table.column("_index").to_pylist())


def test_pandas_read_json_of_the_shards(jsonl_out: Path) -> None:
    pd = pytest.importorskip("pandas")
    shards = sorted(jsonl_out.glob("*.jsonl"))
    assert len(shards) == 3
    df = pd.concat([pd.read_json(f, lines=True) for f in shards], ignore_index=True)
    assert_data_rows(set(df.columns), df["_index"].tolist())


def test_duckdb_read_json_auto_glob(jsonl_out: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rel = duckdb.sql(f"from read_json_auto('{jsonl_out}/*.jsonl')")
    assert_data_rows(set(rel.columns), [row[0] for row in rel.select("_index").fetchall()])


# -- a folder written in the old layout -------------------------------------------------


@node(output_name="z", name="label")
def old_label(y: int) -> str:
    if y == 14:  # item 7: the one failure recorded in the fixture
        raise ValueError(f"bad {y}")
    return f"v{y}"


def test_old_layout_folder_resumes_into_the_new_layout(tmp_path: Path) -> None:
    """tests/resources/old_layout_jsonl: items 0..9 of this map as the old writer left them
    (`manifest.json`, `000.jsonl` + `001.jsonl` holding 9 rows, `errors/000.jsonl` item 7)."""
    out = tmp_path / "old"
    shutil.copytree(OLD_LAYOUT, out)
    writer = StreamWriter(out, format="jsonl", max_lines_per_file=5, resume=True)
    graph = Graph(nodes=[double, old_label], name="old_layout")
    result = Runner().map(
        graph, inputs={"x": range(20)}, map_over="x", writer=writer, on_error="collect"
    )
    # the old rows were recognised, not redone; a resume retries failed items (item 7)
    assert result.n_skipped == 9
    assert (result.n_items, result.n_ok, result.n_failed) == (11, 10, 1)

    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not (out / "manifest.json").exists()
    assert not (out / "errors").exists()
    assert not [f for f in files if f.endswith(".tmp")]
    data = {f for f in files if re.fullmatch(r"\d{3,}\.jsonl", f)}
    errors = {f for f in files if re.fullmatch(r"_errors/\d{3,}\.jsonl", f)}
    assert files - {"_writer.lock"} == data | errors | {"_manifest.json"}

    manifest = json.loads((out / "_manifest.json").read_text())
    rows = {f: [json.loads(line) for line in (out / f).read_text().splitlines()] for f in data}
    assert {s["file"] for s in manifest["shards"]} == data
    for shard in manifest["shards"]:
        assert shard["rows"] == len(rows[shard["file"]])
    indices = [r["_index"] for rs in rows.values() for r in rs]
    records = [json.loads(line) for f in errors for line in (out / f).read_text().splitlines()]
    failed = [r["_index"] for r in records]
    assert sorted(indices + failed) == list(range(20))  # every item exactly once
    assert failed == [7]
    assert records[0]["node"] == "label"
    assert all(r["y"] == 2 * r["x"] and r["z"] == f"v{r['y']}" for rs in rows.values() for r in rs)
