"""The on-disk layout of a writer's folder: atomic files and the manifest that commits them.

Commit rule (what makes ``resume=True`` exactly-once): a shard is written whole under a
temporary name, fsynced and renamed into place, and only *then* listed in ``manifest.json``,
which is itself replaced atomically. A shard file that the manifest does not list was never
committed (the process died between the rename and the manifest update): on resume it is
deleted and its items are computed again. The manifest is therefore the single source of
truth for which indices are done.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ._intervals import IndexSet, ranges_of

__all__ = [
    "MANIFEST",
    "Manifest",
    "ShardEntry",
    "atomic_write",
    "is_shard_name",
    "natural_key",
    "remove_stale_files",
]

MANIFEST = "manifest.json"
ERRORS_DIR = "errors"
_VERSION = 1
_SHARD_RE = re.compile(r"^\d{3,}\.(jsonl|parquet)$")
_ERRORS_RE = re.compile(r"^\d{3,}\.jsonl$")


def is_shard_name(name: str) -> bool:
    """``000.jsonl``, ``001.parquet``, ``1000.jsonl``: the names a writer gives its shards."""
    return _SHARD_RE.match(name) is not None


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def natural_key(path: Path) -> list[Any]:
    """Sort key in which ``999.jsonl`` comes before ``1000.jsonl``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` whole or not at all: into ``.NAME.tmp`` beside it, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@dataclass
class ShardEntry:
    """One committed file: its name relative to the folder, rows and the indices it holds."""

    file: str
    rows: int
    first_index: int
    last_index: int
    ranges: list[list[int]]

    @classmethod
    def of(cls, file: str, indices: list[int]) -> ShardEntry:
        return cls(file, len(indices), min(indices), max(indices), ranges_of(indices))


@dataclass
class Manifest:
    """What ``manifest.json`` holds; see the module docstring for the commit rule."""

    format: str
    graph: str
    inputs: list[str]
    outputs: list[str]
    include_inputs: bool
    flatten: bool
    finished: bool = False
    shards: list[ShardEntry] = field(default_factory=list)
    errors: list[ShardEntry] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)
    version: int = _VERSION

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def n_failed(self) -> int:
        return sum(s.rows for s in self.errors)

    def done(self) -> IndexSet:
        """Every index stored in a committed data or errors shard."""
        return IndexSet(r for s in [*self.shards, *self.errors] for r in s.ranges)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        head = {k: data.pop(k) for k in ("version", "format", "graph", "finished")}
        counts = {"n_rows": self.n_rows, "n_failed": self.n_failed}
        return {**head, **counts, **data}

    def save(self, folder: Path) -> None:
        text = _encode(self.to_json()).encode()
        atomic_write(folder / MANIFEST, lambda f: f.write(text))

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data.pop("n_rows", None)
            data.pop("n_failed", None)
            data["shards"] = [ShardEntry(**s) for s in data["shards"]]
            data["errors"] = [ShardEntry(**s) for s in data["errors"]]
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"{path} is not a hypernodes_chain manifest ({exc}); use a new writer path"
            raise ValueError(msg) from exc


def _encode(data: dict[str, Any]) -> str:
    """Indented JSON with one line per shard: readable, and small enough to rewrite often."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n".join(f"  {json.dumps(v, separators=(',', ':'))}" for v in value)
            text = f"[\n{rows}\n ]"
        else:
            text = json.dumps(value)
        parts.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _own_files(folder: Path) -> Iterator[Path]:
    """Shard, error-shard and temporary files a writer may have left in ``folder``."""
    subfolders = ((folder, is_shard_name), (folder / ERRORS_DIR, _ERRORS_RE.match))
    for sub, is_own in subfolders:
        if sub.is_dir():
            yield from (p for p in sub.iterdir() if is_temp_name(p.name) or is_own(p.name))


def committed_files(folder: Path) -> list[Path]:
    """Shard and error-shard files present in ``folder`` (committed or not; no temp files)."""
    return [p for p in _own_files(folder) if not is_temp_name(p.name)]


def remove_stale_files(folder: Path, manifest: Manifest | None) -> None:
    """Delete temporary files, and shards the manifest does not list (never committed)."""
    listed = set() if manifest is None else {s.file for s in [*manifest.shards, *manifest.errors]}
    for p in _own_files(folder):
        rel = p.relative_to(folder).as_posix()
        if is_temp_name(p.name) or rel not in listed:
            p.unlink(missing_ok=True)
