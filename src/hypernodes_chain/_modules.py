"""Importing a ``.py`` file by its path, for the command line and Hamilton interop.

The file's folder goes first on ``sys.path`` and stays there for the whole process: its
nodes may import sibling modules lazily while running, and worker processes inherit it.
The module is registered in ``sys.modules`` under the name given, because dataclasses,
pickling and typing look modules up by name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

__all__ = ["import_file"]


def import_file(
    path: str | os.PathLike[str],
    name: str,
    *,
    describe: Callable[[BaseException], str] = str,
) -> types.ModuleType:
    """Import the file at ``path`` as the module ``name``.

    Parameters
    ----------
    path
        The ``.py`` file; error messages quote it as given.
    name
        The module's name in ``sys.modules``.
    describe
        Turns the file's own exception into the text quoted in the `ImportError`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ImportError
        The file cannot be imported as a module, or executing it raised (chained to that
        error; the module is then dropped from ``sys.modules``).
    """
    shown = os.fspath(path)
    file = Path(shown)
    if not file.is_file():
        msg = f"no such file: {shown!r}"
        raise FileNotFoundError(msg)
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        msg = f"cannot import {shown!r} as a Python module"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        msg = f"importing {shown!r} failed: {type(exc).__name__}: {describe(exc)}"
        raise ImportError(msg) from exc
    return module
