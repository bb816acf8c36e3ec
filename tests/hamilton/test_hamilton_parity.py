"""Where a converted dataflow and Hamilton's own driver could part ways, side by side.

Each case runs Hamilton's ``driver.Builder()...execute(...)`` and our runners on the same
module of ``tests/resources``: a ``Parallelizable`` block with a branch nobody asked for,
an input named like a computed node, an input that is no node, config keys read only by
``@config.when``, a module with a cycle, and what ``from_modules`` accepts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("hamilton")

from hamilton import driver

from hypernodes_chain import (
    CycleError,
    NodeError,
    PlanError,
    Runner,
    UnknownInputError,
)
from hypernodes_chain.exceptions import InputConflictError
from hypernodes_chain.hamilton import from_modules
from resources import (
    hamilton_branches,
    hamilton_config_only,
    hamilton_cycle,
    hamilton_override,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runners"))
from test_cross_runner import ENTRIES, Entry, close_dask  # noqa: F401  (close_dask: the shared cluster closes after this module)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
IN_PROCESS = [e for e in ENTRIES if e.id != "DaskRunner"]  # node calls countable here


def hamilton(
    module: ModuleType,
    outputs: list[str],
    inputs: dict[str, Any],
    *,
    config: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    dynamic: bool = False,
) -> dict[str, Any]:
    builder = driver.Builder().with_modules(module).with_config(config or {})
    if dynamic:
        builder = builder.enable_dynamic_execution(allow_experimental_mode=True)
    return dict(builder.build().execute(outputs, inputs=inputs, overrides=overrides))


def close(adapter: Any) -> None:
    closer = getattr(adapter.runner, "close", None)
    if closer is not None:
        closer()


# -- a Parallelizable block runs only what the requested outputs need -------------------


@pytest.mark.parametrize("entry", IN_PROCESS, ids=lambda e: e.id)
def test_block_runs_only_the_branch_of_the_requested_collector(entry: Entry) -> None:
    calls = hamilton_branches.CALLS
    calls.clear()
    expected = hamilton(hamilton_branches, ["total_ok"], {"n": 3}, dynamic=True)
    assert expected == {"total_ok": 6} and calls == {"ok": 3}
    graph = from_modules(hamilton_branches)
    adapter = entry.build(cache=None, callbacks=None)
    try:
        calls.clear()
        assert adapter.run(graph, {"n": 3}, output_name=["total_ok"]) == expected
        assert calls == {"ok": 3}  # `fails` never ran: it would have raised
        calls.clear()
        rows = adapter.map(graph, {"n": [2, 3, 0]}, map_over="n", output_name="total_ok")
        assert rows == [{"total_ok": 2}, {"total_ok": 6}, {"total_ok": 0}]
        assert calls == {"ok": 5}
    finally:
        close(adapter)


def test_block_still_runs_the_failing_branch_when_it_is_requested() -> None:
    graph = from_modules(hamilton_branches)
    with pytest.raises(NodeError, match=r"node 'fails' for item 0 failed with RuntimeError"):
        Runner().run(graph, {"n": 3}, output_name=["total_ok", "total_fails"])


# -- an input named like a computed node --------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_override_that_leaves_an_input_unused_is_refused_by_every_runner(entry: Entry) -> None:
    # Hamilton computes `b` from `a` and drops the given `b`; we would take `b` as an
    # override and drop `a`: either way one input is ignored, so we refuse
    assert hamilton(hamilton_override, ["c"], {"a": 1, "b": 100}) == {"c": 20}
    graph = from_modules(hamilton_override)
    message = (
        r"graph 'hamilton_override': input 'b' replaces node 'b', so input 'a' is not used: "
        r"pass one of them"
    )
    adapter = entry.build(cache=None, callbacks=None)
    try:
        with pytest.raises(InputConflictError, match=message):
            adapter.run(graph, {"a": 1, "b": 100}, output_name="c")
        with pytest.raises(InputConflictError, match=message):
            adapter.map(graph, {"a": [1, 2], "b": [100, 200]}, map_over=["a", "b"])
        # one of them: Hamilton's `inputs=` and `overrides=`
        assert adapter.run(graph, {"a": 1}, output_name="c") == {"c": 20}
        assert adapter.run(graph, {"b": 100}, output_name="c") == hamilton(
            hamilton_override, ["c"], {}, overrides={"b": 100}
        )
        rows = adapter.map(graph, {"b": [100, 200]}, map_over="b", output_name="c")
        assert rows == [{"c": 1000}, {"c": 2000}]
    finally:
        close(adapter)


def test_input_conflict_is_a_plan_error() -> None:
    assert issubclass(InputConflictError, PlanError) and issubclass(InputConflictError, ValueError)


# -- an input that is no node ------------------------------------------------------------


def test_an_input_that_is_no_node_is_returned_when_requested() -> None:
    inputs = {"a": 1, "extra": [7]}
    expected = hamilton(hamilton_override, ["c", "extra"], inputs)
    assert expected == {"c": 20, "extra": [7]}
    graph = from_modules(hamilton_override)
    out = Runner().run(graph, inputs, output_name=["c", "extra"])
    assert out == expected and out["extra"] is inputs["extra"]  # as given
    rows = Runner().map(graph, {"a": [1, 2], "extra": "x"}, map_over="a", output_name=["extra"])
    assert rows == [{"extra": "x"}, {"extra": "x"}]


def test_an_input_that_nothing_reads_is_still_an_error_with_the_close_match() -> None:
    graph = from_modules(hamilton_override)
    with pytest.raises(UnknownInputError, match=r"unknown input 'aa'.*did you mean 'a'\?"):
        Runner().run(graph, {"a": 1, "aa": 2}, output_name="c")


# -- config keys ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_a_config_key_read_only_by_config_when_can_be_requested(version: int) -> None:
    config = {"fn_1_version": version}
    outputs = ["fn", "fn_1_version"]
    expected = hamilton(hamilton_config_only, outputs, {}, config=config)
    assert expected == {"fn": version, "fn_1_version": version}
    graph = from_modules(hamilton_config_only, config=config)
    assert Runner().run(graph, {}, output_name=outputs) == expected


# -- a module with a cycle ----------------------------------------------------------------


def test_a_module_with_a_cycle_is_refused_with_the_cycle_path() -> None:
    # Hamilton computes the acyclic part; we refuse the whole module, naming the cycle
    assert hamilton(hamilton_cycle, ["a"], {"x": 1}) == {"a": 2}
    with pytest.raises(CycleError, match=r"the graph has a cycle: p -> q -> p$"):
        from_modules(hamilton_cycle)


# -- what from_modules takes --------------------------------------------------------------


def test_from_modules_takes_modules_or_paths_of_py_files() -> None:
    with pytest.raises(
        TypeError,
        match=r"from_modules takes modules or paths of \.py files, got str 'x'; "
        r"for a module name, pass importlib\.import_module\('x'\)",
    ):
        from_modules("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got int 3$"):
        from_modules(3)  # type: ignore[arg-type]
    path = RESOURCES / "hamilton_override.py"
    for source in (path, str(path)):
        graph = from_modules(source, name="chain")
        assert [n.name for n in graph.nodes] == ["b", "c"]
        assert Runner().run(graph, {"a": 1}) == {"b": 2, "c": 20}
    with pytest.raises(FileNotFoundError, match=r"no such file: '.*nowhere\.py'"):
        from_modules(RESOURCES / "nowhere.py")
