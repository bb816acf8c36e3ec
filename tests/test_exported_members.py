"""The public surface: every name in __all__ exists, and no public name is left out."""

from __future__ import annotations

import hypernodes_chain


def test_all_names_exist():
    for name in hypernodes_chain.__all__:
        assert hasattr(hypernodes_chain, name), name


def test_public_members_are_exported():
    public = {
        name
        for name, value in vars(hypernodes_chain).items()
        if not name.startswith("_") and not getattr(value, "__file__", None)  # skip submodules
    }
    assert public == set(hypernodes_chain.__all__) - {"__version__"}


def test_design_names_are_present():
    for name in [
        "Graph",
        "node",
        "Runner",
        "DiskCache",
        "MemoryCache",
        "Callback",
        "MapResult",
        "ItemFailure",
        "NodeStarted",
        "NodeFinished",
        "StreamingChunkEvent",
    ]:
        assert name in hypernodes_chain.__all__
