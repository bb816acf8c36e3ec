"""`ProgressCallback`: a rich view of a run or map: tree, live bars, summary table.

It reacts only to the core's events, which are per batch during ``map``, so watching a
million items costs a few hundred updates. Node times and rates come from the injected
``get_time`` clock (NodeStarted to NodeFinished), the same clock rich's bars use for rate
and ETA: one time base for everything shown, and a fake clock makes the output exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .callbacks import Callback
from .events import (
    BatchFinished,
    EngineStarted,
    EngineStopped,
    Event,
    GraphFinished,
    GraphStarted,
    MapFinished,
    MapStarted,
    NodeFailed,
    NodeFinished,
    NodeStarted,
)
from .viz import rich_tree

__all__ = ["ProgressCallback"]


def format_seconds(seconds: float) -> str:
    """``0.0004``: ``400µs``; ``0.25``: ``250.0ms``; ``3.5``: ``3.50s``; ``75``: ``1m15s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def format_rate(per_second: float | None, unit: str = "items") -> str:
    return f"- {unit}/s" if per_second is None else f"{per_second:,.1f} {unit}/s"


class RateColumn(ProgressColumn):
    """Items per second, measured by rich over the task's recent updates."""

    def render(self, task: Task) -> Text:
        return Text(format_rate(task.speed), style="progress.data.speed")


class DoneColumn(ProgressColumn):
    """``12,000/1,000,000``: done over total, with thousands separators like the summary."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{int(task.total):,}"
        return Text(f"{int(task.completed):,}/{total}", style="progress.download")


class CountsColumn(ProgressColumn):
    """The task's ``cached`` count (node bars) and ``failed`` count when non-zero."""

    def render(self, task: Task) -> Text:
        text = Text()
        if "cached" in task.fields:
            text.append(f"{task.fields['cached']:,} cached", style="cyan")
        failed = task.fields.get("failed", 0)
        if failed:
            text.append((" " if text else "") + f"{failed:,} failed", style="red")
        return text


def fitted_columns(
    width: int, total: int | None, labels: list[str], *, is_map: bool
) -> list[ProgressColumn]:
    """The bar's columns for a console ``width`` wide, never wrapping a line: the bar
    shrinks first (to 10 cells), then the rate goes, then the ETA; the counts of cached
    and failed items always stay."""
    label = max((len(x) for x in labels), default=16)
    done = 2 * len(f"{total:,}") + 1 if total is not None else 13
    # "12,345 cached" plus room for a few failures; a rate like "12,345.6 items/s"
    parts: dict[str, int] = {"done": done, "rate": 16, "eta": 7, "counts": 18}
    bar = 40
    for drop in (None, "rate", "eta"):
        if drop is not None:
            del parts[drop]
        fixed = label + sum(parts.values()) + len(parts) + 1  # one space between columns
        bar = min(40, width - fixed)
        if bar >= 10:
            break
    columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn(max(bar, 5))]
    columns.append(DoneColumn())
    if "rate" in parts:
        columns.append(RateColumn())
    if "eta" in parts:
        columns.append(TimeRemainingColumn())
    columns.append(CountsColumn())
    return columns


class NodeStats:
    """What one node (at one nesting path) did during a run."""

    __slots__ = (
        "cached",
        "completion_tokens",
        "failed",
        "items",
        "prompt_tokens",
        "seconds",
        "task",
    )

    def __init__(self, task: TaskID) -> None:
        self.items = 0
        self.cached = 0
        self.failed = 0
        self.seconds = 0.0
        self.prompt_tokens = 0  # nodes that call engines, where the engine tells
        self.completion_tokens = 0
        self.task = task

    def tokens(self, seconds: float) -> tuple[str, str]:
        """The tokens cell (prompt + completion) and completion tokens per second."""
        if not (self.prompt_tokens or self.completion_tokens):
            return "", ""
        rate = self.completion_tokens / seconds if seconds > 0 else None
        return f"{self.prompt_tokens:,} + {self.completion_tokens:,}", format_rate(rate, "tok")


class RunView:
    """The state of the run or map on display: its nodes, counts and bars."""

    def __init__(
        self,
        root: tuple[str, ...],
        total: int | None,
        progress: Progress,
        *,
        is_map: bool,
        skipped: int = 0,
    ) -> None:
        self.root = root
        self.skipped = skipped  # a resumed map: items stored before, where the bars start
        self.is_map = is_map
        self.total = total  # items per top-level node: map total (or None), 1 for a run
        self.progress = progress
        self.t0 = 0.0
        self.nodes: dict[tuple[str, ...], NodeStats] = {}
        # open NodeStarted times per (node key, item index): a run's failing node never
        # finishes, and nested graphs run items concurrently, so starts pair by index
        self.started: dict[tuple[tuple[str, ...], int | None], list[float]] = {}
        self.n_failed = 0
        # a map gets an overall bar (items done), its node bars indented under it
        self.overall = (
            progress.add_task(root[0], total=total, failed=0, completed=skipped) if is_map else None
        )
        self.done = skipped  # items of the map finished, stored ones included
        self.cache_seconds = 0.0  # a map's cache look-ups and stores
        self.write_seconds = 0.0  # a map's hand-off of batches to its writer
        self.last_line = 0.0  # when the last plain status line was printed

    def node(self, key: tuple[str, ...]) -> NodeStats:
        stats = self.nodes.get(key)
        if stats is None:
            stats = self.nodes[key] = NodeStats(self._add_bar(key))
        return stats

    def _add_bar(self, key: tuple[str, ...]) -> TaskID:
        top = len(key) == 1
        total = self.total if top else None  # nested nodes: count and rate only
        label = ("  " if self.is_map else "") + "/".join(key)
        start = self.skipped if top else 0
        return self.progress.add_task(label, total=total, cached=0, failed=0, completed=start)

    def stop_timer(self, key: tuple[str, ...], index: int | None, now: float) -> float | None:
        starts = self.started.get((key, index))
        if not starts:
            return None
        t0 = starts.pop()  # LIFO: a start that never finished stays at the bottom
        if not starts:
            del self.started[(key, index)]
        return now - t0

    def ordered(self) -> list[tuple[tuple[str, ...], NodeStats]]:
        """Rows in first-seen order, each nested node right under its graph node."""
        rank = {key: i for i, key in enumerate(self.nodes)}

        def sort_key(key: tuple[str, ...]) -> tuple[int, ...]:
            return tuple(rank.get(key[: d + 1], len(rank)) for d in range(len(key)))

        return sorted(self.nodes.items(), key=lambda kv: sort_key(kv[0]))


def summary(view: RunView, graph: str, counts: tuple[int, int, int], wall: float) -> Group:
    """The end-of-run table (per node: items, cached, failed, time, share) and a footer."""
    table = Table(
        title=f"{graph}: summary", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    table.add_column("node")
    tokens = any(s.prompt_tokens or s.completion_tokens for s in view.nodes.values())
    names = ("items", "cached", "failed", "time", "share")
    for name in (*names, "tokens (in + out)", "out tokens/s") if tokens else names:
        table.add_column(name, justify="right")
    nodes = sum(s.seconds for key, s in view.nodes.items() if len(key) == 1)
    extra = [("cache", view.cache_seconds), ("writer", view.write_seconds)]
    busy = nodes + sum(seconds for _, seconds in extra)
    # shares of the wall time: what the nodes, the cache and the writer do not account for
    # is "other" (reading inputs, the driver); overlapping work can add up past the wall
    whole = max(wall, busy)
    other = wall - busy
    if whole > 0 and other / whole >= 0.001:
        extra.append(("other", other))
    for key, s in view.ordered():
        share = f"{100 * s.seconds / whole:.1f}%" if whole > 0 else "-"
        failed = Text(f"{s.failed:,}", style="red" if s.failed else "")
        name = "  " * (len(key) - 1) + key[-1]
        cells: list[str | Text] = [name, f"{s.items:,}", f"{s.cached:,}", failed]
        cells += [format_seconds(s.seconds), share]
        table.add_row(*cells, *(s.tokens(s.seconds) if tokens else ()))
    for name, seconds in extra:
        if seconds > 0:
            share = f"{100 * seconds / whole:.1f}%" if whole > 0 else "-"
            table.add_row(
                Text(f"({name})", style="dim"), "", "", "", format_seconds(seconds), share
            )
    n_items, n_ok, n_failed = counts
    rate = n_items / wall if wall > 0 else None
    footer = Text(
        f"{n_items:,} item{'' if n_items == 1 else 's'} · {n_ok:,} ok · {n_failed:,} failed · "
        f"{format_seconds(wall)} wall · {format_rate(rate)}"
    )
    return Group(table, footer)


def status_line(view: RunView, now: float) -> str:
    """``chain: 12,000/300,000 items (4.0%) · 2,345 items/s · 3 failed · ETA 2m03s``."""
    done, total = view.done, view.total
    this_run = done - view.skipped
    elapsed = now - view.t0
    rate = this_run / elapsed if elapsed > 0 else None
    parts = [f"{view.root[0]}: {done:,}" + (f"/{total:,}" if total is not None else "") + " items"]
    if total:
        parts[0] += f" ({100 * done / total:.1f}%)"
    parts.append(format_rate(rate))
    parts.append(f"{view.n_failed:,} failed")
    if total is not None and rate:
        parts.append(f"ETA {format_seconds((total - done) / rate)}")
    return " · ".join(parts)


class ProgressCallback(Callback):
    """Show a run or map on a rich console: the graph's tree, a live bar per node, a summary.

    Parameters
    ----------
    console
        Where to draw; a rich ``Console`` on stderr by default. Jupyter works as is.
    graph
        The graph whose tree is printed when a run of a graph with its name starts
        (an event carrying the graph object as ``graph_obj`` serves as well).
    show_tree
        Print the graph's tree before the run.
    transient
        Remove the bars when the run ends (the summary stays).
    refresh_per_second
        How often the live bars redraw.
    get_time
        The clock for node times, rates and ETA (tests pass a fake one).
    enabled
        ``None``: live bars on a terminal or in Jupyter; elsewhere (a CI log, ``nohup``, a
        file) a plain status line every ``log_every`` seconds and the summary. ``True``:
        always bars (to a file, printed once, at the end); ``False``: nothing.
    log_every
        Seconds between the plain status lines where the console is not interactive.

    Engine starts and stops (`EngineStarted`, `EngineStopped`) are one line each. After a
    resume, bars start at the items the folder already holds, so rate and ETA are this
    run's.

    It shows one run at a time: a new run closes the previous one's bars. A map that
    raises sends no finish event, so use it as ``with ProgressCallback() as cb:`` (or call
    `close`) to stop its bars and give the terminal back.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        graph: Any = None,
        show_tree: bool = True,
        transient: bool = False,
        refresh_per_second: float = 8,
        get_time: Callable[[], float] = time.monotonic,
        enabled: bool | None = None,
        log_every: float = 5.0,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.log_every = log_every
        self.graph = graph
        self.show_tree = show_tree
        self.transient = transient
        self.refresh_per_second = refresh_per_second
        self.get_time = get_time
        interactive = self.console.is_terminal or self.console.is_jupyter
        self.plain = enabled is None and not interactive  # status lines instead of bars
        self.enabled = True if enabled is None else enabled
        self._lock = threading.RLock()
        self._view: RunView | None = None

    def __call__(self, event: Event) -> None:
        if self.enabled:  # disabled: one attribute check per (per-batch) event
            with self._lock:
                super().__call__(event)

    # -- run boundaries ---------------------------------------------------------------
    def on_graph_started(self, event: GraphStarted) -> None:
        if len(event.path) == 1:
            self._start(event, event.graph, total=1, is_map=False)

    def on_map_started(self, event: MapStarted) -> None:
        if len(event.path) == 1:
            self._start(event, event.graph, total=event.total, is_map=True, skipped=event.n_skipped)

    def on_graph_finished(self, event: GraphFinished) -> None:
        view = self._view
        if view is not None and event.path == view.root and not view.is_map:
            failed = int(event.error is not None)
            self._finish(event.graph, (1, 1 - failed, failed), event.error)

    def on_map_finished(self, event: MapFinished) -> None:
        view = self._view
        if view is not None and event.path == view.root:
            counts = (event.n_items, event.n_ok, event.n_failed)
            self._finish(event.graph, counts, getattr(event, "error", None))

    def close(self) -> None:
        """Stop the live display of a run that never finished (it raised), if any."""
        with self._lock:
            if self._view is not None and not self.plain:
                progress = self._view.progress
                progress.refresh()  # the last frame (Jupyter keeps it; stop() may not draw)
                progress.stop()
            self._view = None

    def __enter__(self) -> ProgressCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- during the run -----------------------------------------------------------------
    def on_node_started(self, event: NodeStarted) -> None:
        view = self._view
        if view is not None and event.path[:1] == view.root:
            key = (*event.path[1:], event.node)
            view.node(key)
            view.started.setdefault((key, event.index), []).append(self.get_time())

    def on_node_finished(self, event: NodeFinished) -> None:
        view = self._view
        if view is None or event.path[:1] != view.root:
            return
        key = (*event.path[1:], event.node)
        stats = view.node(key)
        elapsed = view.stop_timer(key, event.index, self.get_time())
        stats.seconds += elapsed if elapsed is not None else event.duration
        stats.items += event.n_items
        stats.cached += event.n_cached
        stats.prompt_tokens += event.prompt_tokens
        stats.completion_tokens += event.completion_tokens
        view.progress.update(stats.task, advance=event.n_items, cached=stats.cached)

    def on_node_failed(self, event: NodeFailed) -> None:
        view = self._view
        if view is None or event.path[:1] != view.root:
            return
        key = (*event.path[1:], event.node)
        stats = view.node(key)
        stats.failed += event.n_items  # a map's batch: one event for its failed items
        elapsed = view.stop_timer(key, event.index, self.get_time())
        if elapsed is not None:  # a run's node that raised: no NodeFinished follows
            stats.seconds += elapsed
            stats.items += 1
        view.progress.update(stats.task, advance=int(elapsed is not None), failed=stats.failed)

    def on_batch_finished(self, event: BatchFinished) -> None:
        view = self._view
        if view is not None and event.path == view.root and view.overall is not None:
            view.n_failed += event.n_failed
            view.done = view.skipped + event.n_done
            view.cache_seconds += event.cache_seconds
            view.write_seconds += event.write_seconds
            view.progress.update(view.overall, completed=view.done, failed=view.n_failed)
            if self.plain:
                now = self.get_time()
                if now - view.last_line >= self.log_every:
                    view.last_line = now
                    self.console.print(status_line(view, now), highlight=False)

    def on_engine_started(self, event: EngineStarted) -> None:
        self.console.print(
            Text(f"engine {event.name!r} started in {format_seconds(event.seconds)}", "cyan")
        )

    def on_engine_stopped(self, event: EngineStopped) -> None:
        self.console.print(Text(f"engine {event.name!r} stopped ({event.reason})", "cyan"))

    # -- helpers ------------------------------------------------------------------------
    def _start(
        self, event: Event, name: str, *, total: int | None, is_map: bool, skipped: int = 0
    ) -> None:
        self.close()  # a previous run that raised never sent its finish event
        graph = getattr(event, "graph_obj", None)
        if graph is None and self.graph is not None and self.graph.name == name:
            graph = self.graph
        if self.show_tree and graph is not None:
            self.console.print(rich_tree(graph))
        interactive = self.console.is_terminal or self.console.is_jupyter
        labels = [name]
        if graph is not None:
            labels += [("  " if is_map else "") + n.name for n in graph.nodes]
        columns = fitted_columns(self.console.width, total, labels, is_map=is_map)
        progress = Progress(
            *columns,
            console=self.console,
            transient=self.transient,
            auto_refresh=interactive,  # to a file, one final render is enough
            refresh_per_second=self.refresh_per_second,
            get_time=self.get_time,
        )
        self._view = RunView(event.path, total, progress, is_map=is_map, skipped=skipped)
        self._view.t0 = self._view.last_line = self.get_time()
        if not self.plain:
            progress.start()

    def _finish(self, name: str, counts: tuple[int, int, int], error: Any) -> None:
        view = self._view
        assert view is not None
        wall = self.get_time() - view.t0
        self.close()
        self.console.print(summary(view, name, counts, wall))
        if error is not None:
            why = f": {error}" if str(error) else ""
            self.console.print(Text(f"stopped by {type(error).__name__}{why}", style="red"))
