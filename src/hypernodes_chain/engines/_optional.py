"""Lazy imports of the libraries engines run on (torch, transformers, ollama, httpx, ...).

Typed as ``Any``, so mypy sees the same code whether an extra is installed or not, and
failing with the ``pip install`` line that brings the library.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["optional"]


def optional(name: str, who: str, extra: str) -> Any:
    """The module ``name``, which ``who`` needs; ImportError naming the ``extra`` if absent."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = f"{who} needs {name!r}: pip install 'hypernodes-chain[{extra}]'"
        raise ImportError(msg) from exc
