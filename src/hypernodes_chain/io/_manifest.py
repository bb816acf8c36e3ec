"""The on-disk layout of a writer's folder: atomic files and the manifest that commits them.

Commit rule (what makes ``resume=True`` exactly-once): a shard is written whole under a
temporary name, fsynced and renamed into place, and only *then* listed in ``_manifest.json``,
which is itself replaced atomically. A shard file that the manifest does not list was never
committed (the process died between the rename and the manifest update): on resume it is
deleted and its items are computed again. The manifest is therefore the single source of
truth for which indices are done; it records each shard's rows, index ranges, size and
blake2b digest, so resume can tell a damaged shard (`ShardEntry.damage`) and redo its items.

Everything that is not data starts with ``_`` or ``.`` (the Hive/Spark convention that
pyarrow, pandas, polars, duckdb and ``datasets`` skip), so the folder itself reads as a
dataset. Folders of the first layout (``manifest.json``, ``errors/``) are moved to this one
by `migrate_old_layout`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import chain
from pathlib import Path
from typing import IO, Any

from ._intervals import IndexSet, ranges_of

__all__ = [
    "MANIFEST",
    "Manifest",
    "ShardEntry",
    "atomic_write",
    "digest",
    "find_manifest",
    "is_shard_name",
    "migrate_old_layout",
    "natural_key",
    "remove_stale_files",
]

MANIFEST = "_manifest.json"
ERRORS_DIR = "_errors"
OLD_MANIFEST = "manifest.json"  # the first layout, before the Hive/Spark convention
OLD_ERRORS_DIR = "errors"
_VERSION = 2
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


def atomic_write(path: Path, write: Callable[[IO[bytes]], object] | bytes) -> None:
    """Write ``path`` whole or not at all: into ``.NAME.tmp`` beside it, fsync, rename.

    Once the rename is done the file is in place, whatever happens after (the folder's
    fsync is best effort), so a caller may rely on "raised" meaning "not written".
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fsync_dir(path.parent)
    except OSError:
        pass


def digest(data: bytes | Sequence[bytes]) -> str:
    """The checksum the manifest records for a shard: blake2b, 16 bytes, hex (of the parts
    one after the other, when given in parts)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (data,) if isinstance(data, bytes) else data:
        h.update(part)
    return h.hexdigest()


@dataclass
class ShardEntry:
    """One committed file: its name relative to the folder, rows, the indices it holds,
    and its size and digest (absent, -1 and "", in manifests of the first layout).

    ``ranges`` holds the indices as ``[start, stop)`` runs, flat (start, stop, start, ...)
    in an array of 8-byte ints: a shard of scattered items (an errors shard, or a data
    shard with every tenth item failed) has one run per item, and the writer keeps every
    entry while it runs; as lists of lists they cost 8x the memory.
    """

    file: str
    rows: int
    first_index: int
    last_index: int
    ranges: array[int]
    size: int = -1
    blake2b: str = ""

    @classmethod
    def of(cls, file: str, indices: list[int], data: bytes | Sequence[bytes]) -> ShardEntry:
        """The entry of a file holding ``data`` (whole, or the parts it was written in)."""
        size = len(data) if isinstance(data, bytes) else sum(map(len, data))
        return cls(
            file, len(indices), min(indices), max(indices), _flat(ranges_of(indices)),
            size, digest(data),
        )  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardEntry:
        """The entry of one line of the manifest (``ranges`` as ``[[start, stop], ...]``)."""
        return cls(**{**data, "ranges": _flat(data["ranges"])})

    def runs(self) -> Iterator[tuple[int, int]]:
        """The ``(start, stop)`` runs of its indices, in order."""
        flat = self.ranges
        return zip(flat[::2], flat[1::2], strict=True)

    def to_json(self) -> str:
        """The entry as one line of JSON, ``ranges`` as ``[[start, stop], ...]``."""
        runs = ",".join(f"[{a},{b}]" for a, b in self.runs())
        return (
            f'{{"file":{json.dumps(self.file)},"rows":{self.rows},'
            f'"first_index":{self.first_index},"last_index":{self.last_index},'
            f'"ranges":[{runs}],"size":{self.size},"blake2b":{json.dumps(self.blake2b)}}}'
        )

    @property
    def number(self) -> int:
        """The shard's number: 7 for ``007.parquet`` and ``_errors/007.jsonl``."""
        return int(Path(self.file).name.split(".")[0])

    def damage(self, folder: Path) -> str | None:
        """Why the file does not match this entry (gone, other size or digest), or None."""
        path = folder / self.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return "the file is gone"
        except OSError as exc:
            return f"it cannot be read ({exc})"
        if self.size < 0:  # first layout: no checksum, count the rows instead
            return _count_damage(path, data, self.rows)
        if len(data) != self.size:
            return f"it holds {len(data):,} bytes, the manifest says {self.size:,}"
        if digest(data) != self.blake2b:
            return "its checksum does not match the manifest's"
        return None


def _count_damage(path: Path, data: bytes, rows: int) -> str | None:
    if path.suffix == ".jsonl":
        n = 0
        try:
            for line in data.decode("utf-8").splitlines():
                json.loads(line)
                n += 1
        except ValueError:
            return "it holds a line that is not JSON"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            n = pq.read_metadata(pa.py_buffer(data)).num_rows
        except (OSError, pa.ArrowException):
            return "it is not a readable parquet file"
    return None if n == rows else f"it holds {n:,} rows, the manifest says {rows:,}"


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
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    version: int = _VERSION

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def n_failed(self) -> int:
        return sum(s.rows for s in self.errors)

    def done(self) -> IndexSet:
        """Every index stored in a committed data shard (failed items are not done)."""
        return IndexSet(r for s in self.shards for r in s.runs())

    def failed(self) -> IndexSet:
        """Every index with a failure record in a committed errors shard."""
        return IndexSet(r for s in self.errors for r in s.runs())

    def next_name(self, errors: bool, suffix: str) -> str:
        """The name of the next data (or errors) shard: one past the highest listed."""
        entries = self.errors if errors else self.shards
        number = max((e.number for e in entries), default=-1) + 1
        return f"{ERRORS_DIR}/{number:03d}.jsonl" if errors else f"{number:03d}.{suffix}"

    def to_json(self) -> str:
        """The manifest's text: indented JSON with one line per shard, readable and small
        enough to rewrite at every commit."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        head = {k: data.pop(k) for k in ("version", "format", "graph", "finished")}
        counts = {"n_rows": self.n_rows, "n_failed": self.n_failed}
        parts = []
        for key, value in {**head, **counts, **data}.items():
            if key in ("shards", "errors") and value:
                lines = ",\n".join(f"  {entry.to_json()}" for entry in value)
                text = f"[\n{lines}\n ]"
            else:
                text = json.dumps(value)
            parts.append(f" {json.dumps(key)}: {text}")
        return "{\n" + ",\n".join(parts) + "\n}\n"

    def save(self, folder: Path) -> None:
        atomic_write(folder / MANIFEST, self.to_json().encode())

    def copy(self) -> Manifest:
        """A copy whose shard lists can grow without touching this one."""
        return replace(self, shards=list(self.shards), errors=list(self.errors))

    @classmethod
    def load(cls, folder: Path, name: str = MANIFEST) -> Manifest:
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data.pop("n_rows", None)
            data.pop("n_failed", None)
            data["shards"] = [ShardEntry.from_json(s) for s in data["shards"]]
            data["errors"] = [ShardEntry.from_json(s) for s in data["errors"]]
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"{path} is not a hypernodes_chain manifest ({exc}); use a new writer path"
            raise ValueError(msg) from exc


def find_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, of this layout or the first; None when it has none."""
    for name in (MANIFEST, OLD_MANIFEST):
        if (folder / name).is_file():
            return Manifest.load(folder, name)
    return None


def migrate_old_layout(folder: Path) -> bool:
    """Move a folder of the first layout (``manifest.json``, ``errors/``) to this one.

    Each step is a rename, and the new manifest is written before the old one goes, so a
    crash halfway leaves a folder that the next call finishes. True when it moved something.
    """
    old = folder / OLD_MANIFEST
    if not old.is_file():
        return False
    manifest = Manifest.load(folder, OLD_MANIFEST)
    (folder / ERRORS_DIR).mkdir(exist_ok=True)
    for entry in manifest.errors:
        if entry.file.startswith(f"{OLD_ERRORS_DIR}/"):
            name = entry.file.split("/", 1)[1]
            moved = folder / OLD_ERRORS_DIR / name
            if moved.is_file():
                os.replace(moved, folder / ERRORS_DIR / name)
            entry.file = f"{ERRORS_DIR}/{name}"
    manifest.version = _VERSION
    manifest.save(folder)
    old.unlink()
    leftovers = folder / OLD_ERRORS_DIR
    if leftovers.is_dir():  # uncommitted error shards and temporary files of the old layout
        for p in leftovers.iterdir():
            if is_temp_name(p.name) or _ERRORS_RE.match(p.name):
                p.unlink(missing_ok=True)
    try:
        (folder / OLD_ERRORS_DIR).rmdir()
    except OSError:
        pass  # not empty (files of its own) or already gone
    return True


def _flat(runs: Iterable[Iterable[int]]) -> array[int]:
    return array("q", chain.from_iterable(runs))


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
