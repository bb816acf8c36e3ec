"""Lazy imports of the libraries behind the optional extras (dask, daft, torch, ollama, ...).

Importing ``hypernodes_chain`` imports none of them: each is imported when first needed,
typed as ``Any`` (so mypy sees the same code whether an extra is installed or not), and a
missing one fails with the ``pip install`` line that brings it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["optional"]


def optional(name: str, who: str, extra: str | None = None, *, install: str | None = None) -> Any:
    """The module ``name``, which ``who`` needs.

    Raises
    ------
    ImportError
        ``name`` is not installed; the message says ``pip install 'hypernodes-chain[extra]'``,
        or ``install`` for a library that no extra brings.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        hint = install if install is not None else f"pip install 'hypernodes-chain[{extra}]'"
        msg = f"{who} needs {name!r}: {hint}"
        raise ImportError(msg) from exc
