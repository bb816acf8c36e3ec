"""What a converted Hamilton dataflow looks like, and what it keeps: names, types, docs and
tags; inputs and config; validators; cache identity; pickling; telemetry; the CLI loader."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("hamilton")

import hamilton.graph
from hamilton.data_quality.base import DataValidationError
from rich.console import Console

from hypernodes_chain import (
    Callback,
    CycleError,
    Graph,
    GraphNode,
    ItemFailure,
    MemoryCache,
    NodeError,
    NodeFinished,
    Runner,
)
from hypernodes_chain.hamilton import (
    ConfigNode,
    HamiltonNode,
    from_modules,
    is_dataflow,
    load_dataflow,
    parse_config,
)
from hypernodes_chain.viz import rich_tree
from resources import (
    hamilton_basic,
    hamilton_checks,
    hamilton_modifiers,
    hamilton_parallel,
)

ROOT = Path(__file__).resolve().parents[2]


def tree_text(graph: Graph) -> str:
    console = Console(width=120, color_system=None, record=True, file=io.StringIO())
    console.print(rich_tree(graph))
    return console.export_text()


# -- structure -------------------------------------------------------------------------


def test_names_types_docs_and_tags_carry_over() -> None:
    graph = from_modules(hamilton_basic, config={"region": "eu"})
    signups = graph.producer_of("signups")
    assert isinstance(signups, HamiltonNode)
    assert signups.name == "signups" and signups.outputs == ("signups",)
    assert signups.__doc__ == "Signups, never negative."
    assert signups.tags["owner"] == "finance" and signups.tags["pii"] == "false"
    assert signups.tags["module"] == "resources.hamilton_basic"
    assert signups.hints == {"raw_signups": int, "return": int}
    assert signups.output_type("signups") is int and signups.input_type("raw_signups") is int
    tax = graph.producer_of("tax")  # the `__eu` function, under Hamilton's name
    assert tax.name == "tax" and tax.__doc__ == "EU tax."
    assert tax.tags["hamilton.config"] == "region"
    total = graph.producer_of("total")  # @does: Hamilton's callable around `_sum_of`
    assert total.__doc__ == "Spend plus tax, computed by ``_sum_of``."
    docs = from_modules(hamilton_modifiers)
    assert docs.producer_of("plus_ten").__doc__ == "10 added to base."
    assert docs.producer_of("plus_base").__doc__ == "base added to base."


def test_inputs_optional_inputs_and_private_helpers() -> None:
    graph = from_modules(hamilton_basic, config={"region": "eu"})
    assert set(graph.inputs) == {"raw_spend", "raw_signups"}
    assert set(graph.optional_inputs) == {"currency_rate", "discount"}
    names = {n.name for n in graph.nodes}
    assert not any(name.startswith("_") for name in names)  # _scale, _sum_of are helpers
    assert names == {"region", "spend", "signups", "spend_per_signup", "tax", "label", "total",
                     "report"}  # fmt: skip
    out = Runner().run(graph, {"raw_spend": 10.0, "raw_signups": 2}, output_name="report")
    assert out == {"report": "eu:2 total=12.00"}  # defaults: currency_rate=1, discount=0
    out = Runner().run(
        graph, {"raw_spend": 10.0, "raw_signups": 2, "currency_rate": 3.0, "discount": 6.0},
        output_name="report",
    )  # fmt: skip
    assert out == {"report": "eu:2 total=30.00"}


def test_every_config_value_is_a_constant_node() -> None:
    eu = from_modules(hamilton_basic, config={"region": "eu"})
    region = eu.producer_of("region")
    assert isinstance(region, ConfigNode) and region.value == "eu" and region.inputs == ()
    assert "region" not in eu.inputs
    us = from_modules(hamilton_basic, config={"region": "us", "unused": 1})
    # read by @config.when only, or by nothing: still nodes, as in Hamilton
    assert us.producer_of("region").value == "us" and us.producer_of("unused").value == 1
    assert us.producer_of("label").spec.originating == (hamilton_basic.label__other,)


def test_graph_from_modules_is_the_same_conversion() -> None:
    ours = Graph.from_modules(hamilton_modifiers)
    assert [n.name for n in ours.nodes] == [n.name for n in from_modules(hamilton_modifiers).nodes]
    assert ours.name == "hamilton_modifiers"
    assert from_modules(hamilton_basic, hamilton_checks, config={"region": "us"}).name == (
        "hamilton_basic+hamilton_checks"
    )


def test_parallelizable_block_is_a_nested_mapped_graph() -> None:
    graph = from_modules(hamilton_parallel)
    block = next(n for n in graph.nodes if isinstance(n, GraphNode))
    assert block.name == "block-url" and block.map_over == ("url",)
    assert [n.name for n in block.graph.nodes] == ["body", "size"]
    assert block.outputs == ("size",) and set(block.inputs) == {"url", "bonus", "repeat"}
    assert graph.producer_of("url").hints["return"] == list[str]  # Parallelizable[str]
    assert graph.producer_of("total_size").hints["size"] == list[int]  # Collect[int]
    assert set(graph.optional_inputs) == {"repeat"}
    text = tree_text(graph)
    assert "block-url(url, bonus, repeat) → size  [graph, map over url]" in text
    assert "size(body, bonus) → size" in text


def test_subdag_and_pipe_names_keep_hamiltons_namespaces() -> None:
    graph = from_modules(hamilton_modifiers)
    inner = graph.producer_of("squared_high.inner_offset")
    assert inner.inputs == ("squared_high.inner_square", "squared_high.offset")
    assert all(p.isidentifier() for p in inner.parameters)  # renamed to call by position
    assert graph.producer_of("piped.with_add_1").inputs == ("piped.with_add", "low")
    assert "squared_high.inner_square" in tree_text(graph)


# -- validators -------------------------------------------------------------------------


def test_check_output_fail_is_a_node_error_naming_the_validator() -> None:
    graph = from_modules(hamilton_checks)
    with pytest.raises(NodeError, match=r"node 'doubled' .*\[doubled:range_validator\] validator failed") as info:  # fmt: skip
        Runner().run(graph, {"raw": 60.0}, output_name="grade")
    assert isinstance(info.value.__cause__, DataValidationError)
    rows = Runner().map(
        graph, {"raw": [10.0, 60.0, 20.0]}, map_over="raw", output_name="grade", on_error="collect"
    )
    assert rows[0] == {"grade": "low"} and rows[2] == {"grade": "low"}
    assert isinstance(rows[1], ItemFailure) and rows[1].node == "doubled"


def test_check_output_warn_logs_like_hamilton(caplog: pytest.LogCaptureFixture) -> None:
    graph = from_modules(hamilton_checks)
    with caplog.at_level(logging.WARNING, logger="hamilton.data_quality.base"):
        assert Runner().run(graph, {"raw": 20.0}, output_name="score") == {"score": 200.0}
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "[score:range_validator] validator failed" in warned[0].getMessage()


# -- conversion errors -------------------------------------------------------------------


def write_module(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_a_block_nobody_collects_is_a_clear_error(tmp_path: Path) -> None:
    path = write_module(tmp_path, "uncollected_flow", """
        from hamilton.htypes import Parallelizable

        def item(n: int) -> Parallelizable[int]:
            yield from range(n)

        def square(item: int) -> int:
            return item * item
        """)  # fmt: skip
    with pytest.raises(ValueError, match=r"block of 'item' is never collected.*\(square\)"):
        load_dataflow(path)


def test_mixing_two_blocks_is_a_clear_error(tmp_path: Path) -> None:
    path = write_module(tmp_path, "mixed_flow", """
        from hamilton.htypes import Collect, Parallelizable

        def left(n: int) -> Parallelizable[int]:
            yield from range(n)

        def right(n: int) -> Parallelizable[int]:
            yield from range(n)

        def both(left: int, right: int) -> int:
            return left + right

        def total(both: Collect[int]) -> int:
            return sum(both)
        """)  # fmt: skip
    with pytest.raises(ValueError, match=r"node 'both' reads '(left|right)' from the Parallelizable block"):  # fmt: skip
        load_dataflow(path)


def test_collecting_a_value_outside_any_block_is_a_clear_error(tmp_path: Path) -> None:
    path = write_module(tmp_path, "stray_collect_flow", """
        from hamilton.htypes import Collect

        def value(n: int) -> int:
            return n

        def total(value: Collect[int]) -> int:
            return sum(value)
        """)  # fmt: skip
    with pytest.raises(ValueError, match=r"'total' collects 'value'.*not produced inside"):
        load_dataflow(path)


def test_a_cycle_is_named(tmp_path: Path) -> None:
    path = write_module(tmp_path, "cyclic_flow", """
        def a(b: int) -> int:
            return b

        def b(a: int) -> int:
            return a
        """)  # fmt: skip
    with pytest.raises(CycleError, match=r"the graph has a cycle: (a -> b -> a|b -> a -> b)"):
        load_dataflow(path)


def test_hamiltons_own_errors_come_through() -> None:
    with pytest.raises(TypeError, match="at least one module"):
        from_modules()
    with pytest.raises(ValueError, match=r"Cannot define function \w+ more than once"):
        from_modules(hamilton_basic, hamilton_basic, config={"region": "eu"})


# -- cache identity -------------------------------------------------------------------------


class Cached(Callback):
    def __init__(self) -> None:
        self.cached: dict[str, bool] = {}

    def on_node_finished(self, event: NodeFinished) -> None:
        self.cached[event.node] = event.cached


FLOW_V1 = """
    from hamilton.function_modifiers import parameterize, value

    def _bump(x: int) -> int:
        return x + 1

    def a(x: int) -> int:
        return _bump(x)

    @parameterize(b_ten={"k": value(10)})
    def b(a: int, k: int) -> int:
        return a * k
    """


def run_cached(cache: MemoryCache, path: Path) -> tuple[dict[str, int], dict[str, bool]]:
    seen = Cached()
    out = Runner(cache=cache, callbacks=[seen]).run(load_dataflow(path), {"x": 1})
    return out, seen.cached


def test_cache_follows_the_users_code_and_modifier_parameters(tmp_path: Path) -> None:
    cache = MemoryCache()
    v1 = write_module(tmp_path, "cached_flow_v1", FLOW_V1)
    assert run_cached(cache, v1) == ({"a": 2, "b_ten": 20}, {"a": False, "b_ten": False})
    # a second conversion (another graph, same code): every node is a hit
    assert run_cached(cache, v1) == ({"a": 2, "b_ten": 20}, {"a": True, "b_ten": True})
    # a modifier's parameter changes: that node only
    v2 = write_module(tmp_path, "cached_flow_v2", FLOW_V1.replace("value(10)", "value(11)"))
    assert run_cached(cache, v2) == ({"a": 2, "b_ten": 22}, {"a": True, "b_ten": False})
    # a helper the user's function calls changes: it and everything downstream
    v3 = write_module(tmp_path, "cached_flow_v3", FLOW_V1.replace("x + 1", "x + 2"))
    assert run_cached(cache, v3) == ({"a": 3, "b_ten": 30}, {"a": False, "b_ten": False})


# -- pickling (Dask ships graphs with cloudpickle) ---------------------------------------------


def test_graphs_pickle_with_tags_docs_and_renames() -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    for module in (hamilton_modifiers, hamilton_parallel):
        graph = from_modules(module)
        copy = cloudpickle.loads(cloudpickle.dumps(graph))
        assert [n.name for n in copy.nodes] == [n.name for n in graph.nodes]
    graph = from_modules(hamilton_modifiers)
    copy = cloudpickle.loads(cloudpickle.dumps(graph))
    assert Runner().run(copy, {"seed": 4}, output_name="summary") == Runner().run(
        graph, {"seed": 4}, output_name="summary"
    )
    node = from_modules(hamilton_basic, config={"region": "eu"}).producer_of("signups")
    renamed = node.rename(inputs={"raw_signups": "n"}, outputs={"signups": "m"})
    back = cloudpickle.loads(cloudpickle.dumps(renamed))
    assert (back.inputs, back.outputs, back.tags, back.__doc__) == (
        ("n",), ("m",), renamed.tags, "Signups, never negative."
    )  # fmt: skip
    assert back(raw_signups=-3) == 0


# -- telemetry ------------------------------------------------------------------------------


def test_conversion_sends_no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def refuse(what: str):
        def fail(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"{what} during conversion")

        return fail

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(threading.Thread, "start", refuse("Thread.start"))
    telemetry = sys.modules.get("hamilton.telemetry")
    if telemetry is not None:  # Hamilton < 1.89 sends through this function
        monkeypatch.setattr(telemetry, "send_event_json", refuse("send_event_json"), raising=False)
    seen_env: list[str | None] = []
    resolve = hamilton.graph.create_function_graph

    def spy(*args, **kwargs):
        seen_env.append(os.environ.get("HAMILTON_TELEMETRY_ENABLED"))
        return resolve(*args, **kwargs)

    monkeypatch.setattr(hamilton.graph, "create_function_graph", spy)
    monkeypatch.delenv("HAMILTON_TELEMETRY_ENABLED", raising=False)
    graph = from_modules(hamilton_parallel)
    assert seen_env == ["false"]  # Hamilton ran with telemetry switched off
    assert "HAMILTON_TELEMETRY_ENABLED" not in os.environ  # and the user's setting is back
    assert calls == []
    assert Runner().run(graph, {"prefix": "p", "n_pages": 2, "bonus": 0}, output_name="total_size")


def test_importing_the_package_imports_no_hamilton() -> None:
    code = (
        "import sys, hypernodes_chain, hypernodes_chain.graph\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'hamilton'], 'hamilton imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- the command line's loader ------------------------------------------------------------


def test_load_dataflow_from_a_file_with_config_and_outputs(tmp_path: Path) -> None:
    source = Path(hamilton_basic.__file__).read_text()
    path = write_module(tmp_path, "my_dataflow", source)
    config = parse_config(["region=eu"])
    graph = load_dataflow(str(path), config=config, outputs=["report"])
    assert set(graph.outputs) == {"region", "spend", "signups", "tax", "label", "total", "report"}
    out = Runner().run(graph, {"raw_spend": 5.0, "raw_signups": 1})
    assert out["report"] == "eu:1 total=6.00"
    assert load_dataflow("resources.hamilton_checks").name == "hamilton_checks"
    assert load_dataflow(hamilton_parallel, outputs="mean_size").outputs[-1] == "mean_size"


def test_load_dataflow_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataflow(tmp_path / "missing.py")
    broken = write_module(tmp_path, "broken_flow", "def f(:\n")
    with pytest.raises(ImportError, match=r"importing .*broken_flow\.py' failed: SyntaxError"):
        load_dataflow(broken)
    empty = write_module(tmp_path, "no_functions_flow", "X = 1\n")
    with pytest.raises(ValueError, match="defines no public function"):
        load_dataflow(empty)
    with pytest.raises(ValueError, match=r"unknown output 'totl'; did you mean 'total'\?"):
        load_dataflow(hamilton_basic, config={"region": "eu"}, outputs=["totl"])


def test_is_dataflow_and_parse_config() -> None:
    import resources.words as words  # a module of @node functions, not a Hamilton dataflow

    assert is_dataflow(hamilton_basic) and not is_dataflow(words)
    parsed = parse_config(["region=eu", "n=3", "rate=0.5", "flag=true", 'name="x"', "raw=a=b"])
    assert parsed == {"region": "eu", "n": 3, "rate": 0.5, "flag": True, "name": "x", "raw": "a=b"}
    with pytest.raises(ValueError, match=r"config item 'region': expected KEY=VALUE"):
        parse_config(["region"])
