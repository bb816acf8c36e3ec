"""Map inputs from every library users hold data in: nodes get Python values, lazily.

One table of sources, each skipping when its library is missing. Every case maps the same
graph over the same 2,500 rows (several slices and batches) and checks what the nodes
received: the values and their Python types.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from hypernodes_chain import AsyncRunner, Graph, Runner, UnknownInputError, node
from hypernodes_chain.runners import _sources

N = 2_500
TEXTS = [f"review {i}" for i in range(N)]
STARS = [i % 5 + 1 for i in range(N)]


@node
def line(text: str, stars: int) -> str:
    assert type(text) is str, f"got {type(text).__name__} for text"
    assert type(stars) is int, f"got {type(stars).__name__} for stars"
    return f"{stars}: {text}"


GRAPH = Graph([line], name="lines")
EXPECTED = [{"line": f"{s}: {t}"} for t, s in zip(TEXTS, STARS)]


def _pa() -> Any:
    return pytest.importorskip("pyarrow")


def _table() -> Any:
    pa = _pa()
    parts = [  # several chunks, so chunk boundaries are crossed inside batches
        pa.table({"text": TEXTS[a : a + 700], "stars": STARS[a : a + 700]})
        for a in range(0, N, 700)
    ]
    table = pa.concat_tables(parts)
    return table.append_column("extra", pa.array([0.5] * N))


def columns_pyarrow() -> Any:
    table = _table()
    return {"text": table["text"], "stars": table["stars"]}  # ChunkedArrays


def columns_pyarrow_array() -> Any:
    pa = _pa()
    return {"text": pa.array(TEXTS), "stars": pa.array(STARS)}


def columns_numpy() -> Any:
    np = pytest.importorskip("numpy")
    return {"text": np.array(TEXTS), "stars": np.array(STARS)}


def columns_pandas() -> Any:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"text": TEXTS, "stars": STARS})
    return {"text": frame["text"], "stars": frame["stars"]}


def columns_polars() -> Any:
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"text": TEXTS, "stars": STARS})
    return {"text": frame["text"], "stars": frame["stars"]}


def table_pyarrow() -> Any:
    return _table()


def table_pyarrow_reader() -> Any:
    return _table().to_reader(max_chunksize=300)


def table_pyarrow_dataset(tmp_path: Any = None) -> Any:
    import tempfile

    ds = pytest.importorskip("pyarrow.dataset")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tempfile.mkdtemp()
    pq.write_table(_table(), f"{folder}/part.parquet", row_group_size=400)
    return ds.dataset(folder)


def table_pandas() -> Any:
    pd = pytest.importorskip("pandas")
    return pd.DataFrame({"text": TEXTS, "stars": STARS, "extra": 1})


def table_polars() -> Any:
    pl = pytest.importorskip("polars")
    return pl.DataFrame({"text": TEXTS, "stars": STARS, "extra": 1})


def table_hf_dataset() -> Any:
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict({"text": TEXTS, "stars": STARS})


def table_hf_iterable() -> Any:
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict({"text": TEXTS, "stars": STARS}).to_iterable_dataset(
        num_shards=3
    )


def columns_hf_columns() -> Any:
    data = table_hf_dataset()
    return {"text": data["text"], "stars": data["stars"]}


SOURCES: list[Callable[[], Any]] = [
    columns_pyarrow,
    columns_pyarrow_array,
    columns_numpy,
    columns_pandas,
    columns_polars,
    columns_hf_columns,
    table_pyarrow,
    table_pyarrow_reader,
    table_pyarrow_dataset,
    table_pandas,
    table_polars,
    table_hf_dataset,
    table_hf_iterable,
]


@pytest.mark.parametrize("source", SOURCES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("runner", ["Runner", "AsyncRunner"])
def test_nodes_get_python_values_from_every_source(source: Any, runner: str) -> None:
    inputs = source()
    kw = {"map_over": ["text", "stars"], "batch_size": 512}
    if runner == "Runner":
        out = Runner().map(GRAPH, inputs, **kw)
    else:
        import asyncio

        out = asyncio.run(AsyncRunner().map(GRAPH, inputs, **kw))
    assert out == EXPECTED


def test_imap_over_a_reader_keeps_memory_to_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader is drawn only as far as the batches being worked on."""
    pa = _pa()
    drawn = 0

    def batches() -> Any:
        nonlocal drawn
        for a in range(0, 200_000, 1_000):
            drawn += 1_000
            yield pa.record_batch({"text": TEXTS[:1] * 1_000, "stars": list(range(a, a + 1_000))})

    schema = pa.schema([("text", pa.string()), ("stars", pa.int64())])
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    worst = 0
    rows = Runner().imap(GRAPH, reader, map_over=["text", "stars"], batch_size=1_000)
    last = None
    for i, row in enumerate(rows):
        worst = max(worst, drawn - i)
        last = row
    assert i == 199_999 and last == {"line": "199999: review 0"}
    assert worst <= 3_000, f"the reader was drawn {worst} rows ahead of the results"


def test_a_missing_column_is_named() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"text": ["a"], "stars": [1]})
    with pytest.raises(UnknownInputError, match=r"\['stars2'\].*columns of the DataFrame"):
        Runner().map(GRAPH, frame, map_over=["text", "stars2"])


def test_something_that_is_neither_a_mapping_nor_a_table_is_refused() -> None:
    with pytest.raises(TypeError, match="map inputs must be a mapping"):
        Runner().map(GRAPH, [("text", ["a"])], map_over="text")


def test_library_columns_convert_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    pa = _pa()
    monkeypatch.setattr(_sources, "SLICE", 100)
    column = _sources.as_column(pa.array(range(1_000)))
    assert len(column) == 1_000
    first = list(itertools.islice(iter(column), 150))
    assert first == list(range(150)) and all(type(v) is int for v in first)
