"""Shared parameters are described once: the runners' docstrings agree word for word."""

from __future__ import annotations

import inspect
import re

from hypernodes_chain import AsyncRunner, Runner


def parameters(doc: str) -> dict[str, str]:
    section = doc.split("Parameters\n", 1)[1]
    out: dict[str, str] = {}
    for match in re.finditer(r"^(\w+)\n((?:    .*\n?)+)", section, flags=re.M):
        out[match.group(1)] = " ".join(match.group(2).split())
    return out


def test_shared_runner_parameters_are_described_identically():
    sync = parameters(inspect.getdoc(Runner) + "\n")
    asyn = parameters(inspect.getdoc(AsyncRunner) + "\n")
    assert {"cache", "callbacks", "engines"} <= sync.keys() & asyn.keys()
    for name in ("cache", "callbacks", "engines"):
        assert sync[name] == asyn[name], name


def test_map_docstrings_agree():
    first = lambda f: inspect.getdoc(f).split("\n\n")[1]  # noqa: E731
    assert first(Runner.map) == first(AsyncRunner.map)
