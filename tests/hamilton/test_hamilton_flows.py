"""Hamilton dataflows give Hamilton's results under every runner.

Each flow is a module of ``tests/resources`` with a config, shared inputs and per-item
inputs. Hamilton's own ``driver.Builder()...execute(final_vars, inputs=...)`` is the
reference, per item; the same graph then runs through ``Runner().run``, ``Runner().map``
(1,000 items) and every entry of the cross-runner table (tests/runners/test_cross_runner.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("hamilton")
pd = pytest.importorskip("pandas")

from hamilton import driver  # noqa: E402

from hypernodes_chain import Graph, Runner  # noqa: E402
from hypernodes_chain.hamilton import from_modules  # noqa: E402
from resources import (  # noqa: E402
    hamilton_basic,
    hamilton_checks,
    hamilton_frames,
    hamilton_modifiers,
    hamilton_nested,
    hamilton_parallel,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runners"))
from test_cross_runner import ENTRIES, Entry, close_dask  # noqa: E402, F401  (close_dask: the shared cluster closes after this module)

N_ITEMS = 1_000
N_TABLE = 12  # items per cross-runner entry (a Dask task per batch: keep it small)


@dataclass(frozen=True)
class Flow:
    id: str
    module: ModuleType
    outputs: list[str]
    item: Callable[[int], dict[str, Any]]  # the inputs that vary, for item i
    constants: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    dynamic: bool = False  # Parallelizable/Collect: Hamilton's dynamic execution

    def inputs(self, i: int) -> dict[str, Any]:
        return {**self.constants, **self.item(i)}

    def columns(self, n: int) -> dict[str, Any]:
        items = [self.item(i) for i in range(n)]
        return {**self.constants, **{k: [it[k] for it in items] for k in items[0]}}


FLOWS = [
    Flow(
        "config-eu-does-tag",
        hamilton_basic,
        ["spend", "signups", "spend_per_signup", "tax", "label", "total", "report"],
        lambda i: {"raw_spend": float(i), "raw_signups": i % 7 - 1},
        config={"region": "eu"},
    ),
    Flow(
        "config-us-optional-inputs",
        hamilton_basic,
        ["tax", "label", "total", "report"],
        lambda i: {"raw_spend": i / 4, "raw_signups": i % 5, "discount": i % 3 / 2},
        constants={"currency_rate": 2.0},
        config={"region": "us"},
    ),
    Flow(
        "parameterize-extract-pipe-subdag",
        hamilton_modifiers,
        ["summary", "low", "high", "plus_ten", "plus_base", "piped", "squared_high", "boosted"],
        lambda i: {"seed": i - 500},
    ),
    Flow(
        "check-output",
        hamilton_checks,
        ["score", "doubled", "grade"],
        lambda i: {"raw": (i % 13) * 0.9},
    ),
    Flow(
        "extract-columns-pandas",
        hamilton_frames,
        ["width", "area", "total_area"],
        lambda i: {"n_boxes": i % 6},
        constants={"scale": 0.5},
    ),
    Flow(
        "parallelizable-collect",
        hamilton_parallel,
        ["total_size", "mean_size"],
        lambda i: {"n_pages": i % 5, "bonus": i % 3},
        constants={"prefix": "site"},
        dynamic=True,
    ),
]


def plain(value: Any) -> Any:
    """Values compared as plain data (a pandas Series by its name, index and values)."""
    if isinstance(value, pd.Series):
        return ("Series", value.name, value.index.tolist(), value.tolist())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


_HAMILTON: dict[str, list[dict[str, Any]]] = {}


def hamilton_results(flow: Flow) -> list[dict[str, Any]]:
    """Hamilton's own results for the flow's first N_ITEMS items, one execute per item."""
    if flow.id not in _HAMILTON:
        builder = driver.Builder().with_modules(flow.module).with_config(flow.config)
        if flow.dynamic:
            builder = builder.enable_dynamic_execution(allow_experimental_mode=True)
        dr = builder.build()
        _HAMILTON[flow.id] = [
            plain(dr.execute(flow.outputs, inputs=flow.inputs(i))) for i in range(N_ITEMS)
        ]
    return _HAMILTON[flow.id]


def graph_of(flow: Flow) -> Graph:
    return from_modules(flow.module, config=flow.config)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.id)
def test_run_equals_hamilton_execute(flow: Flow) -> None:
    graph, expected = graph_of(flow), hamilton_results(flow)
    for i in (0, 1, 7, 500, N_ITEMS - 1):
        got = Runner().run(graph, flow.inputs(i), output_name=flow.outputs)
        assert plain(got) == expected[i]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.id)
def test_map_equals_hamilton_per_item(flow: Flow) -> None:
    graph = graph_of(flow)
    map_over = list(flow.item(0))
    got = Runner().map(graph, flow.columns(N_ITEMS), map_over=map_over, output_name=flow.outputs)
    assert [plain(r) for r in got] == hamilton_results(flow)


# the Dask part stays small: these two cover Hamilton's closures and the nested graphs
DASK_FLOWS = ("parameterize-extract-pipe-subdag", "parallelizable-collect")
TABLE = [
    pytest.param(entry, flow, id=f"{entry.id}-{flow.id}")
    for entry in ENTRIES
    for flow in FLOWS
    if entry.id != "DaskRunner" or flow.id in DASK_FLOWS
]


@pytest.mark.parametrize(("entry", "flow"), TABLE)
def test_every_runner_equals_hamilton(entry: Entry, flow: Flow) -> None:
    graph, expected = graph_of(flow), hamilton_results(flow)[:N_TABLE]
    adapter = entry.build(cache=None, callbacks=None)
    try:
        got = adapter.run(graph, flow.inputs(3), output_name=flow.outputs)
        assert plain(got) == expected[3]
        rows = adapter.map(
            graph,
            flow.columns(N_TABLE),
            map_over=list(flow.item(0)),
            output_name=flow.outputs,
            batch_size=5,
        )
        assert [plain(r) for r in rows] == expected
    finally:
        close = getattr(adapter.runner, "close", None)
        if close is not None:
            close()


# -- nested blocks: beyond Hamilton (one level, one collector), so against plain Python ----


def expected_labels(groups: list[list[int]], factor: int) -> list[str]:
    out = []
    for group in groups:
        values = [m * factor for m in group]
        out.append(f"{len(group)} members, total {sum(values)}, max {max(values, default=0)}")
    return out


def nested_groups(i: int) -> list[list[int]]:
    return [list(range(j, j + i % 4)) for j in range(i % 3)]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_nested_parallel_blocks_under_every_runner(entry: Entry) -> None:
    graph = from_modules(hamilton_nested)
    adapter = entry.build(cache=None, callbacks=None)
    try:
        got = adapter.run(graph, {"groups": [[1, 2], [3], []], "factor": 10}, output_name="labels")
        assert got == {
            "labels": ["2 members, total 30, max 20", "1 members, total 30, max 30",
                       "0 members, total 0, max 0"]
        }  # fmt: skip
        groups = [nested_groups(i) for i in range(N_TABLE)]
        rows = adapter.map(
            graph, {"groups": groups, "factor": 3}, map_over="groups", output_name="labels"
        )
        assert [r["labels"] for r in rows] == [expected_labels(g, 3) for g in groups]
    finally:
        close = getattr(adapter.runner, "close", None)
        if close is not None:
            close()


def test_nested_blocks_map_many_items() -> None:
    graph = from_modules(hamilton_nested)
    groups = [nested_groups(i) for i in range(N_ITEMS)]
    rows = Runner().map(graph, {"groups": groups, "factor": 2}, map_over="groups")
    assert [r["labels"] for r in rows] == [expected_labels(g, 2) for g in groups]
