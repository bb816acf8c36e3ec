"""ProgressCallback: tree, bars and summary compared as text, with a fake clock.

The nodes advance the fake clock as they work (0.1 s per item for ``add_one``, 0.3 s
for ``double``), and the callback times nodes with that clock, so every number shown
(node times, shares, rates, wall time) is exact. Rates are items over the time the work
took: a node's items over its own time, the run's items over its wall time less engine
starts; the numbers on the bars and in the summary are parsed and must agree.
"""

from __future__ import annotations

import asyncio
import io
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from hypernodes_chain import AsyncRunner, Graph, MemoryCache, Runner, node
from hypernodes_chain.progress import ProgressCallback, format_seconds


class MockClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_graph(clock: MockClock, fail_on: int | None = None) -> Graph:
    @node(output_name="a")
    def add_one(x: int) -> int:
        clock.advance(0.1)
        if x == fail_on:
            raise ValueError(f"bad item {x}")
        return x + 1

    @node(output_name="b")
    def double(a: int) -> int:
        clock.advance(0.3)
        return a * 2

    return Graph([add_one, double], name="chain")


def text_console(*, terminal: bool = False) -> Console:
    return Console(
        file=io.StringIO(), width=100, color_system=None, force_terminal=terminal, record=True
    )


def output(console: Console) -> str:
    """What was printed, each line right-stripped (rich pads table cells)."""
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def table_rows(text: str) -> list[list[str]]:
    """The summary's rows, split on runs of spaces: [[node, items, cached, failed, ...]]."""
    lines = text.split("─" * 10, 1)[1].splitlines()[1:]
    rows = []
    for line in lines:
        if " · " in line:  # the footer
            break
        if not line.lstrip().startswith("("):  # (cache), (writer), (other): real clock
            rows.append(line.split())
    return rows


BAR = "━" * 40
TREE = "chain\n├── inputs: x\n├── add_one(x) → a\n└── double(a) → b\n"


def test_map_shows_tree_bars_and_summary():
    clock = MockClock()
    graph = make_graph(clock)
    console = text_console()
    cb = ProgressCallback(console, graph=graph, get_time=clock, enabled=True)
    out = Runner(callbacks=[cb]).map(graph, {"x": list(range(10))}, map_over="x", batch_size=5)
    assert out[0] == {"a": 1, "b": 2}
    # not a terminal: the bars are printed once, in their final state
    assert output(console) == (
        TREE + f"chain     {BAR} 10/10 2.5 items/s\n"
        f"  add_one {BAR} 10/10 10.0 items/s  0 cached\n"
        f"  double  {BAR} 10/10 3.3 items/s   0 cached\n"
        "chain: summary\n"
        " node      items   cached   failed    time   share   items/s\n" + "─" * 61 + "\n"
        " add_one      10        0        0   1.00s   25.0%      10.0\n"
        " double       10        0        0   3.00s   75.0%       3.3\n"
        "10 items · 10 ok · 0 failed · 4.00s wall · 2.5 items/s\n"
    )


def test_run_shows_one_item_per_node_and_no_overall_bar():
    clock = MockClock()
    graph = make_graph(clock)
    console = text_console()
    cb = ProgressCallback(console, graph=graph, get_time=clock, enabled=True)
    assert Runner(callbacks=[cb]).run(graph, {"x": 1}) == {"a": 2, "b": 4}
    text = output(console)
    assert text.startswith(TREE + f"add_one {BAR} 1/1 10.0 items/s 0 cached\n")
    assert table_rows(text) == [
        ["add_one", "1", "0", "0", "100.0ms", "25.0%", "10.0"],
        ["double", "1", "0", "0", "300.0ms", "75.0%", "3.3"],
    ]
    assert text.endswith("1 item · 1 ok · 0 failed · 400.0ms wall · 2.5 items/s\n")


def test_cached_items_are_counted_in_bars_and_table():
    clock = MockClock()
    graph = make_graph(clock)
    cache = MemoryCache()
    Runner(cache=cache).map(graph, {"x": list(range(4))}, map_over="x")
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    Runner(cache=cache, callbacks=[cb]).map(graph, {"x": list(range(6))}, map_over="x")
    text = output(console)
    # 6 items (4 from the cache) over the 0.2 s the node worked
    assert f"  add_one {BAR} 6/6 30.0 items/s  4 cached\n" in text
    assert table_rows(text) == [
        ["add_one", "6", "4", "0", "200.0ms", "25.0%", "30.0"],
        ["double", "6", "4", "0", "600.0ms", "75.0%", "10.0"],
    ]


def test_collected_failures_are_counted():
    clock = MockClock()
    graph = make_graph(clock, fail_on=3)
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    runner = Runner(callbacks=[cb])
    runner.map(graph, {"x": list(range(5))}, map_over="x", on_error="collect")
    text = output(console)
    assert f"chain     {BAR} 5/5 2.9 items/s   1 failed\n" in text
    assert f"  add_one {BAR} 5/5 10.0 items/s  0 cached 1 failed\n" in text
    assert table_rows(text) == [
        ["add_one", "5", "0", "1", "500.0ms", "29.4%", "10.0"],
        ["double", "4", "0", "0", "1.20s", "70.6%", "3.3"],
    ]
    assert text.endswith("5 items · 4 ok · 1 failed · 1.70s wall · 2.9 items/s\n")


def test_a_run_that_raises_still_ends_with_a_summary():
    clock = MockClock()
    graph = make_graph(clock, fail_on=1)
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    with pytest.raises(Exception, match="bad item 1"):
        Runner(callbacks=[cb]).run(graph, {"x": 1})
    text = output(console)
    assert table_rows(text) == [["add_one", "1", "0", "1", "100.0ms", "100.0%", "10.0"]]
    assert "1 item · 0 ok · 1 failed · 100.0ms wall" in text
    assert text.endswith("stopped by ValueError: bad item 1\n")


def test_a_map_that_raises_closes_its_display_and_says_why():
    clock = MockClock()
    graph = make_graph(clock, fail_on=1)
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    runner = Runner(callbacks=[cb])
    with pytest.raises(Exception, match="bad item 1"):
        runner.map(graph, {"x": [0, 1]}, map_over="x")
    assert cb._view is None  # MapFinished carried the error and closed the bars
    text = output(console)
    assert "stopped by NodeError: node 'add_one' for item 1 failed with ValueError" in text
    assert text.count("chain: summary") == 1
    runner.map(graph, {"x": [5, 6]}, map_over="x")
    assert output(console).count("chain: summary") == 2
    cb.close()  # nothing left to stop: a no-op


def test_leaving_the_with_block_stops_the_bars_and_shows_the_cursor():
    clock = MockClock()
    graph = make_graph(clock, fail_on=1)
    console = text_console(terminal=True)
    cb = ProgressCallback(console, get_time=clock)
    with cb, pytest.raises(Exception, match="bad item 1"):
        Runner(callbacks=[cb]).map(graph, {"x": [0, 1]}, map_over="x")
    assert cb._view is None
    assert not console._live_stack
    assert "\x1b[?25h" in console.file.getvalue()  # the cursor is shown again


def test_nested_graph_rows_sit_under_their_node():
    clock = MockClock()
    inner = make_graph(clock)

    @node(output_name="c")
    def report(b: int) -> str:
        return str(b)

    outer = Graph([inner.as_node(name="inner"), report], name="outer")
    console = text_console()
    cb = ProgressCallback(console, graph=outer, get_time=clock, enabled=True)
    Runner(callbacks=[cb]).map(outer, {"x": [1, 2, 3]}, map_over="x", batch_size=2)
    text = output(console)
    assert text.startswith(
        "outer\n"
        "├── inputs: x\n"
        "├── inner(x) → a, b  [graph]\n"
        "│   ├── add_one(x) → a\n"
        "│   └── double(a) → b\n"
        "└── report(b) → c\n"
    )
    assert "  inner/add_one " in text  # nested bars: a count and a rate, no total
    rows = table_rows(text)
    assert [r[:4] for r in rows] == [
        ["inner", "3", "0", "0"],
        ["add_one", "3", "0", "0"],
        ["double", "3", "0", "0"],
        ["report", "3", "0", "0"],
    ]
    assert [r[4:6] for r in rows[:3]] == [
        ["1.20s", "100.0%"],
        ["300.0ms", "25.0%"],
        ["900.0ms", "75.0%"],
    ]
    assert rows[3][5] == "0.0%"  # report: no fake time, its few real µs only
    assert [r[6] for r in rows[:3]] == ["2.5", "10.0", "3.3"]


def test_async_runner_events_from_tasks_and_threads():
    clock = MockClock()
    graph = make_graph(clock)
    console = text_console()
    cb = ProgressCallback(console, graph=graph, get_time=clock, enabled=True)
    runner = AsyncRunner(callbacks=[cb], max_concurrency=4)
    out = asyncio.run(runner.map(graph, {"x": list(range(8))}, map_over="x", batch_size=4))
    assert len(out) == 8
    text = output(console)
    assert text.startswith(TREE)
    rows = table_rows(text)
    assert [r[:4] for r in rows] == [["add_one", "8", "0", "0"], ["double", "8", "0", "0"]]
    assert all(re.fullmatch(r"[\d.]+(µs|ms|s)", r[4]) for r in rows)
    assert text.endswith(" items/s\n")
    assert "8 items · 8 ok · 0 failed · " in text


def test_plain_status_lines_and_the_summary_when_the_console_is_not_a_terminal():
    clock = MockClock()
    graph = make_graph(clock)
    console = text_console()
    cb = ProgressCallback(console, graph=graph, show_tree=False, get_time=clock, log_every=2.0)
    assert cb.enabled and cb.plain
    Runner(callbacks=[cb]).map(graph, {"x": list(range(20))}, map_over="x", batch_size=2)
    text = output(console)
    lines = [line for line in text.splitlines() if line.startswith("chain: ") and "items" in line]
    # 0.8 s of fake time per batch of 2: a line each time 2 s have passed since the last
    assert lines[0] == "chain: 6/20 items (30.0%) · 2.5 items/s · 0 failed · ETA 5.60s"
    assert len(lines) == 3, lines
    assert BAR not in text, "no bars in a log file"
    assert text.endswith("20 items · 20 ok · 0 failed · 8.00s wall · 2.5 items/s\n")


def test_a_resumed_map_counts_this_run_and_says_the_folder_in_words(tmp_path):
    from hypernodes_chain.io import StreamWriter

    clock = MockClock()
    graph = make_graph(clock, fail_on=None)
    out = tmp_path / "out"
    Runner().map(graph, {"x": list(range(6))}, map_over="x",
                 writer=StreamWriter(out, max_lines_per_file=2))  # fmt: skip
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    Runner(callbacks=[cb]).map(
        graph,
        {"x": list(range(10))},
        map_over="x",
        writer=StreamWriter(out, max_lines_per_file=2, resume=True),
    )
    text = output(console)
    assert text.startswith(
        "chain: resumed, 6 of 10 items stored before this run\nthis run does the other 4\n"
    )
    # every bar and the table count this run: 4 items, over the 4 left to it
    assert f"chain     {BAR} 4/4 2.5 items/s\n" in text, text
    assert f"  add_one {BAR} 4/4 10.0 items/s" in text, text
    rows = {row[0]: row for row in table_rows(text)}
    assert rows["add_one"][1] == "4" and rows["double"][1] == "4"
    assert "4 items · 4 ok · 0 failed · 1.60s wall · 2.5 items/s\n" in text
    assert text.endswith("with the 6 stored before: 10 of 10 items stored\n")


def test_engine_starts_and_stops_are_one_line_each():
    from hypernodes_chain.events import EngineStarted, EngineStopped

    console = text_console()
    cb = ProgressCallback(console, enabled=True)
    cb(EngineStarted(path=(), name="small", seconds=2.5))
    cb(EngineStopped(path=(), name="small", reason="idle"))
    assert output(console) == "engine 'small' started in 2.50s\nengine 'small' stopped (idle)\n"


def test_enabled_in_a_terminal_and_in_jupyter():
    assert ProgressCallback(text_console(terminal=True)).enabled is True
    jupyter = Console(file=io.StringIO(), force_jupyter=True)
    assert ProgressCallback(jupyter).enabled is True
    assert ProgressCallback(text_console(terminal=True), enabled=False).enabled is False


def test_live_display_in_a_terminal():
    clock = MockClock()
    graph = make_graph(clock)
    console = text_console(terminal=True)
    cb = ProgressCallback(console, graph=graph, get_time=clock, transient=True)
    Runner(callbacks=[cb]).map(graph, {"x": list(range(10))}, map_over="x", batch_size=5)
    raw = console.file.getvalue()
    assert "\x1b[?25l" in raw  # the cursor is hidden while the bars are live
    text = console.export_text()
    assert text.startswith(TREE)
    assert text.rstrip().endswith("10 items · 10 ok · 0 failed · 4.00s wall · 2.5 items/s")
    assert table_rows(text)[0] == ["add_one", "10", "0", "0", "1.00s", "25.0%", "10.0"]


def test_tree_from_the_event_when_it_carries_the_graph():
    clock = MockClock()
    graph = make_graph(clock)
    console = text_console()
    cb = ProgressCallback(console, get_time=clock, enabled=True)

    # what GraphStarted would look like with a ``graph_obj`` field
    event = SimpleNamespace(path=("chain",), graph="chain", graph_obj=graph)
    cb.on_graph_started(event)  # type: ignore[arg-type]
    cb.close()  # stops the (empty) bars of a run that will not finish
    assert output(console).rstrip("\n") == TREE.rstrip("\n")


def test_the_running_graph_wins_and_the_tree_can_be_turned_off():
    clock = MockClock()
    graph = make_graph(clock)
    other = Graph(list(graph.nodes), name="other")
    console = text_console()
    cb = ProgressCallback(console, get_time=clock, enabled=True, graph=other)
    Runner(callbacks=[cb]).run(graph, {"x": 1})
    assert output(console).startswith("chain\n├── inputs: x")  # from the event, not `other`
    console = text_console()
    cb = ProgressCallback(console, get_time=clock, enabled=True, graph=graph, show_tree=False)
    Runner(callbacks=[cb]).run(graph, {"x": 1})
    assert output(console).startswith(f"add_one {BAR} 1/1")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0004, "400µs"), (0.25, "250.0ms"), (3.5, "3.50s"), (75, "1m15s"), (7300, "2h01m")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_failures_of_many_batches_agree_between_table_and_footer():
    clock = MockClock()
    graph = make_graph(clock, fail_on=None)

    @node(output_name="a")
    def add_one(x: int) -> int:
        clock.advance(0.1)
        if x % 4 == 0:
            raise ValueError(f"bad item {x}")
        return x + 1

    graph = Graph([add_one, *[n for n in graph.nodes if n.name == "double"]], name="chain")
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    Runner(callbacks=[cb]).map(
        graph, {"x": list(range(40))}, map_over="x", batch_size=8, on_error="collect"
    )
    text = output(console)
    rows = {row[0]: row for row in table_rows(text)}
    assert rows["add_one"][1:4] == ["40", "0", "10"]
    assert "40 items · 30 ok · 10 failed" in text


def test_cache_and_writer_time_are_rows_and_the_shares_add_up_to_the_wall(tmp_path):
    from hypernodes_chain import DiskCache
    from hypernodes_chain.io import StreamWriter

    @node
    def square(x: int) -> int:
        return x * x

    graph = Graph([square], name="squares")
    console = text_console()
    with DiskCache(tmp_path / "cache") as cache:
        cb = ProgressCallback(console, show_tree=False, enabled=True)
        Runner(cache=cache, callbacks=[cb]).map(
            graph, {"x": range(20_000)}, map_over="x", batch_size=1_000,
            writer=StreamWriter(tmp_path / "out", format="parquet"),
        )  # fmt: skip
    lines = output(console).split("─" * 10, 1)[1].splitlines()[1:]
    rows = {line.split()[0]: line.split() for line in lines if " · " not in line and line}
    assert {"square", "(cache)", "(writer)"} <= set(rows), rows
    shares = [float(next(c for c in row if c.endswith("%")).rstrip("%")) for row in rows.values()]
    assert abs(sum(shares) - 100) < 1.0, rows  # nodes + cache + writer + other = the wall


def test_ctrl_c_in_a_node_is_reported_as_what_stopped_the_map():
    from hypernodes_chain import MapFinished

    events = []

    @node
    def stops(x: int) -> int:
        if x == 5:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        Runner(callbacks=[events.append]).map(Graph([stops]), {"x": range(10)}, map_over="x",
                                              batch_size=2)  # fmt: skip
    finished = [e for e in events if isinstance(e, MapFinished)]
    assert len(finished) == 1 and type(finished[0].error) is KeyboardInterrupt, finished


# -- one definition for every number ------------------------------------------------------

BAR_LINE = re.compile(
    r"^(?P<label>\s*\S+)\s+[━╸╺ ]*\s(?P<done>[\d,]+)/(?P<total>[\d,?]+)\s+"
    r"(?P<rate>[-\d,.]+[kM]?) items/s"
)
FOOTER = re.compile(
    r"^(?P<items>[\d,]+) items? · (?P<ok>[\d,]+) ok · (?P<failed>[\d,]+) failed · "
    r"(?P<wall>\S+) wall(, (?P<engines>\S+) of it starting engines)? · (?P<rate>[-\d,.]+[kM]?) items/s"
)


def bars(text: str) -> dict[str, dict[str, str]]:
    """The bars' label -> done, total and rate, as shown."""
    found = {}
    for line in text.splitlines():
        m = BAR_LINE.match(line)
        if m:
            found[m["label"].strip()] = {k: m[k] for k in ("done", "total", "rate")}
    return found


def footer(text: str) -> dict[str, str]:
    m = next(filter(None, map(FOOTER.match, text.splitlines())), None)
    assert m is not None, text
    return m.groupdict()


def seconds(shown: str) -> float:
    """``250.0ms`` -> 0.25 (the inverse of format_seconds, for the units a test meets)."""
    for unit, scale in (("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if shown.endswith(unit):
            return float(shown[: -len(unit)]) * scale
    raise AssertionError(shown)


def assert_bars_agree_with_the_summary(text: str, graph: str) -> dict[str, list[str]]:
    shown, rows, foot = bars(text), {r[0]: r for r in table_rows(text)}, footer(text)
    assert shown[graph]["done"] == foot["items"] and shown[graph]["rate"] == foot["rate"], text
    for name, row in rows.items():
        assert shown[name]["done"] == row[1], (name, text)  # items
        assert shown[name]["rate"] == row[6], (name, text)  # items/s
    return rows


def test_every_number_on_the_bars_agrees_with_the_summary():
    clock = MockClock()
    graph = make_graph(clock, fail_on=7)
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    Runner(callbacks=[cb]).map(
        graph, {"x": list(range(12))}, map_over="x", batch_size=4, on_error="collect"
    )
    text = output(console)
    rows = assert_bars_agree_with_the_summary(text, "chain")
    # a node's rate is its items over its own time, not over the wall time
    assert rows["add_one"][1:7] == ["12", "0", "1", "1.20s", "26.7%", "10.0"]
    assert rows["double"][1:7] == ["11", "0", "0", "3.30s", "73.3%", "3.3"]
    assert footer(text) == {"items": "12", "ok": "11", "failed": "1", "wall": "4.50s",
                            "engines": None, "rate": "2.7"}  # fmt: skip


def test_a_map_stopped_by_a_failing_node_counts_that_item_everywhere():
    clock = MockClock()
    graph = make_graph(clock, fail_on=5)
    console = text_console()
    cb = ProgressCallback(console, show_tree=False, get_time=clock, enabled=True)
    with pytest.raises(Exception, match="bad item 5"):
        Runner(callbacks=[cb]).map(graph, {"x": list(range(8))}, map_over="x", batch_size=4)
    text = output(console)
    # the first batch went through; the second stopped the map at item 5
    # the first batch went through; the second stopped the map at item 5, its bars too
    assert bars(text)["chain"] == {"done": "5", "total": "8", "rate": "2.5"}
    assert re.search(r"^chain .* 1 failed$", text, re.M), text
    rows = assert_bars_agree_with_the_summary(text, "chain")
    assert rows["add_one"][1:4] == ["5", "0", "1"] and rows["double"][1:4] == ["4", "0", "0"]
    assert "5 items · 4 ok · 1 failed · 2.00s wall · 2.5 items/s\n" in text
    assert "stopped by NodeError: node 'add_one' for item 5 failed with ValueError" in text


def test_engine_starts_are_not_work_and_the_eta_waits_for_a_rate():
    """What a map with an LLM node sends: the engine starts in the first batch's call, and
    the batch's events come once it is done (from a worker thread), its call's duration
    covering the engine start."""
    from hypernodes_chain.events import (
        BatchFinished,
        EngineStarted,
        MapFinished,
        MapStarted,
        NodeFinished,
        NodeStarted,
    )

    clock = MockClock()
    console = text_console()
    cb = ProgressCallback(console, get_time=clock, log_every=0)
    path = ("job",)
    cb(MapStarted(path=path, graph="job", total=100, batch_size=10))
    clock.advance(20.0)
    cb(EngineStarted(path=(), name="local", seconds=20.0))
    assert "ETA" not in status_line_now(cb), "no rate yet: no ETA"
    clock.advance(1.0)
    cb(NodeStarted(path=path, node="summarize", n_items=10))
    cb(NodeFinished(path=path, node="summarize", duration=21.0, cached=False, n_items=10))
    # the node has a pace before any item went through the whole map: 90 left at 10/s
    assert status_line_now(cb).endswith("ETA 9.00s")
    cb(BatchFinished(path=path, graph="job", start=0, n_items=10, n_failed=0, n_done=10))
    # 10 items over the 1 s of work after the 20 s engine start: 10/s, 90 left: 9 s
    assert output(console).endswith(
        "engine 'local' started in 20.00s\n"
        "job: 10/100 items (10.0%) · 10.0 items/s · 0 failed · ETA 9.00s\n"
    )
    cb(MapFinished(path=path, graph="job", n_items=10, n_ok=10, n_failed=0, duration=21.0))
    text = output(console)
    rows = {r[0]: r for r in table_rows(text)}
    assert rows["summarize"][1:7] == ["10", "0", "0", "1.00s", "4.8%", "10.0"]
    assert "(engine start)" in text and "20.00s   95.2%" in text
    assert text.endswith(
        "10 items · 10 ok · 0 failed · 21.00s wall, 20.00s of it starting engines · 10.0 items/s\n"
    )


def status_line_now(cb: ProgressCallback) -> str:
    from hypernodes_chain._progress_view import status_line

    assert cb._view is not None
    return status_line(cb._view, cb.get_time())


@pytest.mark.parametrize("name", ["normalize", "a_node_with_a_name_too_long_for_the_table"])
def test_lines_fit_80_columns_without_trailing_spaces(name):
    clock = MockClock()

    def work(x: int) -> int:
        clock.advance(0.001)
        return x

    graph = Graph([node(work, name=name, output_name="y")], name="reviews")
    console = Console(file=io.StringIO(), width=80, color_system=None)
    cb = ProgressCallback(console, graph=graph, get_time=clock, enabled=True)
    Runner(callbacks=[cb]).map(graph, {"x": range(123_456)}, map_over="x", batch_size=10_000)
    raw = console.file.getvalue()
    lines = raw.splitlines()
    assert max(len(line) for line in lines) <= 80, raw
    assert [line for line in lines if line != line.rstrip()] == []
    assert footer(raw)["items"] == "123,456"
    if len(name) < 20:  # room for the rates on the bars
        assert_bars_agree_with_the_summary(raw, "reviews")


def test_hugging_face_bars_are_off_while_a_run_is_on_display(monkeypatch):
    hub = pytest.importorskip("huggingface_hub.utils")
    constants = pytest.importorskip("huggingface_hub.constants")
    # the state a fresh process has, whatever an earlier test of this one left
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    was_off = hub.are_progress_bars_disabled()
    hub.enable_progress_bars()
    seen = []

    @node
    def look(x: int) -> int:
        seen.append(hub.are_progress_bars_disabled())
        return x

    assert not hub.are_progress_bars_disabled()
    cb = ProgressCallback(text_console(), enabled=True)
    Runner(callbacks=[cb]).map(Graph([look]), {"x": [1, 2]}, map_over="x")
    assert seen == [True, True]
    assert not hub.are_progress_bars_disabled(), "on again after the run"
    if was_off:
        hub.disable_progress_bars()


def test_calls_whose_events_come_late_are_timed_where_they_ran():
    """An LLM node's batches run in worker threads, their events handed over once each
    batch is done; the engine takes a while to start and to answer."""
    import time

    from hypernodes_chain.llm import llm_node
    from support.scripted_engine import ScriptedEngine

    class Slow(ScriptedEngine):
        def start(self) -> None:
            time.sleep(0.2)  # a model loading
            super().start()

        def generate(self, prompts, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(0.05)  # a batch decoding
            return super().generate(prompts, **kwargs)

    @llm_node(engine="slow", output_name="loud")
    def loud(word: str) -> str:
        return f"say {word}"

    console = text_console()
    cb = ProgressCallback(console, show_tree=False, enabled=True)
    words = [f"w{i}" for i in range(12)]
    Runner(engines={"slow": Slow()}, callbacks=[cb]).map(
        Graph([loud], name="late"), {"word": words}, map_over="word", batch_size=3
    )
    text = output(console)
    rows = assert_bars_agree_with_the_summary(text, "late")
    assert seconds(rows["loud"][4]) >= 0.05, text  # the engine's answers, not µs of events
    foot = footer(text)
    assert foot["engines"] is not None and seconds(foot["engines"]) >= 0.2, text
    work = seconds(foot["wall"]) - seconds(foot["engines"])
    assert float(foot["rate"].replace(",", "")) == pytest.approx(12 / work, rel=0.1), text
