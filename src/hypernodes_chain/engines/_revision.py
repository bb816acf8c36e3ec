"""The revision digest of a local model folder, shared by the engines that read one.

``"sha256:..."`` over the folder's top-level files (hidden ones skipped): by content for
files up to 64 MiB (config, tokenizer, small weights), by name, size and mtime for larger
ones (big weight shards), so it is stable across start/stop and changes when the weights are
rewritten. Reading many GB of weights at every start would be too slow, hence the limit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["FolderRevision", "folder_revision"]

CONTENT_DIGEST_LIMIT = 64 * 1024 * 1024

FolderRevision = tuple[tuple[Any, ...], str]  # (what the digest was taken of, the digest)


def folder_revision(path: Path, cached: FolderRevision | None = None) -> FolderRevision:
    """The digest of the folder ``path``, with the key it was taken for; ``cached`` is
    returned as it is when the folder's files (names, sizes, mtimes) have not changed."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    stats = [(p.name, st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    key = (str(path), *stats)
    if cached is not None and cached[0] == key:
        return cached
    digest = hashlib.sha256()
    for p, (name, size, mtime) in zip(files, stats):
        digest.update(f"{name}\0{size}\0".encode())
        if size <= CONTENT_DIGEST_LIMIT:
            digest.update(p.read_bytes())
        else:
            digest.update(f"{mtime}\0".encode())
    return key, f"sha256:{digest.hexdigest()}"
