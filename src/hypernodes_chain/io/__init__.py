"""Streaming writers and lazy readers: ``map`` results to sharded files, files to ``map`` inputs."""

from __future__ import annotations

from ._intervals import IndexSet
from .readers import (
    Column,
    CsvReader,
    JsonlReader,
    ParquetReader,
    read_csv,
    read_jsonl,
    read_parquet,
)
from .writers import StreamWriter

__all__ = [
    "Column",
    "CsvReader",
    "IndexSet",
    "JsonlReader",
    "ParquetReader",
    "StreamWriter",
    "read_csv",
    "read_jsonl",
    "read_parquet",
]
