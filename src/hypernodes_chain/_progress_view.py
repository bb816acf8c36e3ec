"""What `ProgressCallback` shows, computed once: counts, times, rates, ETA, and their text.

Every number on the screen has one definition, used by the live bars, the plain status
lines and the summary alike:

- counts are this run's: a resumed map's bars and table count the items this run did, over
  the items left to it; the items stored before are said in words (when the map starts and
  under the summary);
- a node's time is the wall time during which at least one of its calls ran (calls that
  overlap count once), less the time engines spent starting; a call's span ends when its
  `NodeFinished` arrives and is as long as the call took, so events that a worker thread
  hands over late still time the work where it ran;
- the run's work time is its wall time less the time engines spent starting;
- a rate is items over the time they took: a node's items over its time, the run's items
  over its work time;
- the ETA is the time the slowest step needs for its items left at its rate (the steps:
  the run's bar, which counts items that went through every node, and each node), shown
  once the run, or every node of the graph, has a rate.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column, Table
from rich.text import Text

__all__ = [
    "NodeStats",
    "RunView",
    "fit_parts",
    "fitted_columns",
    "format_rate",
    "format_seconds",
    "status_line",
    "summary",
]

Span = tuple[float, float]


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
    """``- items/s`` (no rate yet), ``2.5 items/s``, ``12,345 items/s``, ``332.6k items/s``."""
    return f"{_number(per_second)} {unit}/s"


def _number(value: float | None) -> str:
    """``2.5``, ``12,345``, ``332.6k``, ``9.86M``: at most 6 characters up to a billion."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:,.2f}M"
    if value >= 1e5:
        return f"{value / 1e3:.1f}k"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fit_parts(parts: list[str], width: int, sep: str = " · ") -> list[str]:
    """``parts`` joined by ``sep`` into lines of at most ``width`` characters (a part longer
    than ``width`` gets a line of its own)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return lines


def overlap(start: float, end: float, spans: list[Span]) -> float:
    """How much of ``[start, end]`` the ``spans`` cover (spans do not overlap each other)."""
    return sum(max(0.0, min(end, e) - max(start, s)) for s, e in spans)


class NodeStats:
    """What one node (at one nesting path) did during a run."""

    __slots__ = (
        "busy_until",
        "cached",
        "completion_tokens",
        "failed",
        "items",
        "prompt_tokens",
        "seconds",
        "task",
        "unfinished",
    )

    def __init__(self, task: TaskID) -> None:
        self.items = 0
        self.cached = 0
        self.failed = 0
        self.seconds = 0.0  # the node's time (see the module docstring)
        self.busy_until = float("-inf")  # where the calls timed so far end
        self.prompt_tokens = 0  # nodes that call engines, where the engine tells
        self.completion_tokens = 0
        self.unfinished = 0  # failed items of a batch whose NodeFinished has not come
        self.task = task

    def add_call(self, start: float, end: float, engine_spans: list[Span]) -> None:
        """Count the call that ran from ``start`` to ``end``, less what earlier calls and
        engine starts already cover. Calls are added in the order they end."""
        start = max(start, self.busy_until)
        if end > start:
            self.seconds += (end - start) - overlap(start, end, engine_spans)
            self.busy_until = end

    @property
    def rate(self) -> float | None:
        return self.items / self.seconds if self.items and self.seconds > 0 else None

    def tokens(self) -> tuple[str, str]:
        """The tokens cell (prompt + completion) and completion tokens per second."""
        if not (self.prompt_tokens or self.completion_tokens):
            return "", ""
        rate = self.completion_tokens / self.seconds if self.seconds > 0 else None
        return f"{self.prompt_tokens:,} + {self.completion_tokens:,}", format_rate(rate, "tok")


class RunView:
    """The state of the run or map on display: its nodes, counts, times and bars."""

    def __init__(
        self,
        root: tuple[str, ...],
        total: int | None,
        progress: Progress,
        *,
        is_map: bool,
        skipped: int,
        t0: float,
    ) -> None:
        self.root = root
        self.is_map = is_map
        self.skipped = skipped  # a resumed map: items stored before this run
        # items per top-level node this run: what the map has left to do (or None), 1 for a run
        self.total = None if total is None else max(0, total - skipped)
        self.progress = progress
        self.t0 = self.last_line = t0
        self.nodes: dict[tuple[str, ...], NodeStats] = {}
        # open NodeStarted times per (node key, item index): a run's failing node never
        # finishes, and nested graphs run items concurrently, so starts pair by index
        self.started: dict[tuple[tuple[str, ...], int | None], list[float]] = {}
        self.engine_spans: list[Span] = []  # engine starts: not the nodes' work
        self.expected: list[str] = []  # the graph's top-level nodes, where it is known
        self.done = 0  # items of the map finished this run (their batch handed on)
        self.n_failed = 0  # of those, failed
        self.cache_seconds = 0.0  # a map's cache look-ups and stores
        self.write_seconds = 0.0  # a map's hand-off of batches to its writer
        # a map gets an overall bar (items done), its node bars indented under it
        self.overall = (
            progress.add_task(root[0], total=self.total, failed=0, rate="", eta="")
            if is_map
            else None
        )

    def node(self, key: tuple[str, ...]) -> NodeStats:
        stats = self.nodes.get(key)
        if stats is None:
            top = len(key) == 1
            label = ("  " if self.is_map else "") + "/".join(key)
            total = self.total if top else None  # nested nodes: count and rate only
            task = self.progress.add_task(label, total=total, cached=0, failed=0, rate="", eta="")
            stats = self.nodes[key] = NodeStats(task)
        return stats

    def stop_timer(self, key: tuple[str, ...], index: int | None) -> float | None:
        """When the call of ``key`` for ``index`` was seen to start (None: no start seen)."""
        starts = self.started.get((key, index))
        if not starts:
            return None
        t0 = starts.pop()  # LIFO: a start that never finished stays at the bottom
        if not starts:
            del self.started[(key, index)]
        return t0

    def top_nodes(self) -> list[NodeStats]:
        return [s for key, s in self.nodes.items() if len(key) == 1]

    def close_calls(self, now: float) -> None:
        """The map stopped: calls still open ran until ``now``, and the items that failed
        in a batch that never finished count as the node's items."""
        for (key, _), starts in self.started.items():
            stats = self.nodes[key]
            for start in starts:
                stats.add_call(start, now, self.engine_spans)
        self.started.clear()
        for stats in self.nodes.values():
            stats.items += stats.unfinished
            stats.unfinished = 0

    def engine_seconds(self, now: float) -> float:
        return overlap(self.t0, now, self.engine_spans)

    def work_seconds(self, now: float) -> float:
        return (now - self.t0) - self.engine_seconds(now)

    def rate(self, now: float, items: int | None = None) -> float | None:
        """The run's items (this run's finished ones by default) over its work time."""
        items = self.done if items is None else items
        work = self.work_seconds(now)
        return items / work if items and work > 0 else None

    def eta(self, now: float) -> float | None:
        """Seconds left at the pace of the slowest step: each step (the run's bar, each
        top-level node) takes its items left over its rate, the ETA is the longest. None
        until the run, or every node of the graph, has a rate."""
        if self.total is None:
            return None
        steps: list[tuple[int, float | None]] = [(self.total - self.done, self.rate(now))]
        for name in self.expected or [key[0] for key in self.nodes if len(key) == 1]:
            stats = self.nodes.get((name,))
            if stats is None or not stats.items:
                if steps[0][1] is None:
                    return None  # a step not started yet: its pace is unknown
                continue
            # a node that spent no time (every item cached) never holds the run back
            steps.append((self.total - stats.items, stats.rate))
        paces = [left / rate for left, rate in steps if rate is not None]
        return max(0.0, *paces) if paces else None

    def show_node(self, stats: NodeStats) -> None:
        self.progress.update(
            stats.task,
            completed=stats.items,
            cached=stats.cached,
            failed=stats.failed,
            rate=format_rate(stats.rate),
        )

    def show_overall(self, now: float, *, ended: bool = False) -> None:
        if self.overall is not None:
            eta = None if ended else self.eta(now)
            left = "" if eta is None or self.done == self.total else f"ETA {format_seconds(eta)}"
            self.progress.update(
                self.overall,
                completed=self.done,
                failed=self.n_failed,
                rate=format_rate(self.rate(now)),
                eta=left,
            )

    def ordered(self) -> list[tuple[tuple[str, ...], NodeStats]]:
        """Rows in first-seen order, each nested node right under its graph node."""
        rank = {key: i for i, key in enumerate(self.nodes)}

        def sort_key(key: tuple[str, ...]) -> tuple[int, ...]:
            return tuple(rank.get(key[: d + 1], len(rank)) for d in range(len(key)))

        return sorted(self.nodes.items(), key=lambda kv: sort_key(kv[0]))


# -- the bars -------------------------------------------------------------------------------


def _cell() -> Column:
    """A cell that never wraps: where the console is narrower than planned, it is cut."""
    return Column(no_wrap=True, overflow="ellipsis")


class FieldColumn(ProgressColumn):
    """A text the callback keeps in the task's fields (``rate``, ``eta``)."""

    def __init__(self, name: str, style: str) -> None:
        super().__init__(table_column=_cell())
        self.name, self.style = name, style

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get(self.name, "")), style=self.style)


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
    shrinks first (to 6 cells), then the rate goes, then the ETA; the counts of cached
    and failed items always stay. Only a map has an ETA (on its own bar)."""
    label = max((len(x) for x in labels), default=16)
    done = 2 * len(f"{total:,}") + 1 if total is not None else 13
    # "1,234 cached" (more needs more, and cuts the bar short); a rate like "12,345 items/s"
    parts: dict[str, int] = {"done": done, "rate": 14, "counts": 12}
    if is_map:
        parts["eta"] = 9  # "ETA 1m02s"
    bar = 40
    for drop in (None, "rate", "eta"):
        if drop is not None:
            parts.pop(drop, None)
        fixed = label + sum(parts.values()) + len(parts) + 1  # one space between columns
        bar = min(40, width - fixed)
        if bar >= 6:
            break
    label_column = TextColumn("{task.description}", table_column=_cell())
    columns: list[ProgressColumn] = [label_column, BarColumn(max(bar, 3))]
    columns.append(DoneColumn(table_column=_cell()))
    if "rate" in parts:
        columns.append(FieldColumn("rate", "progress.data.speed"))
    if "eta" in parts:
        columns.append(FieldColumn("eta", "progress.remaining"))
    columns.append(CountsColumn(table_column=_cell()))
    return columns


# -- the lines ------------------------------------------------------------------------------


def status_line(view: RunView, now: float) -> str:
    """``chain: 12,000/300,000 items (4.0%) · 2,345 items/s · 3 failed · ETA 2m03s``."""
    done, total = view.done, view.total
    parts = [f"{view.root[0]}: {done:,}" + (f"/{total:,}" if total is not None else "") + " items"]
    if total:
        parts[0] += f" ({100 * done / total:.1f}%)"
    parts.append(format_rate(view.rate(now)))
    parts.append(f"{view.n_failed:,} failed")
    eta = view.eta(now)
    if eta is not None:
        parts.append(f"ETA {format_seconds(eta)}")
    return " · ".join(parts)


def resumed_line(name: str, skipped: int, total: int | None) -> list[str]:
    """What a resumed map says when it starts: the items stored before, what is left."""
    if total is None:
        return [f"{name}: resumed, {skipped:,} items stored before this run"]
    return [f"{name}: resumed, {skipped:,} of {total:,} items stored before this run",
            f"this run does the other {max(0, total - skipped):,}"]  # fmt: skip


def summary(
    view: RunView, graph: str, counts: tuple[int, int, int], now: float, width: int
) -> RenderableType:
    """The end-of-run table (per node: items, cached, failed, time, share, rate; tokens
    where engines told them) and a footer, fitted to ``width`` columns."""
    wall = now - view.t0
    tokens = any(s.prompt_tokens or s.completion_tokens for s in view.nodes.values())
    wide = tokens and width >= 120  # tokens in the table; else a table of their own
    names = ("items", "cached", "failed", "time", "share", "items/s")
    table = _table(f"{graph}: summary", *names, width=width)
    if wide:
        table.add_column("tokens (in + out)", justify="right")
        table.add_column("out tokens/s", justify="right")
    nodes = sum(s.seconds for key, s in view.nodes.items() if len(key) == 1)
    extra = [
        ("engine start", view.engine_seconds(now)),
        ("cache", view.cache_seconds),
        ("writer", view.write_seconds),
    ]
    busy = nodes + sum(seconds for _, seconds in extra)
    # shares of the wall time: what the nodes, engine starts, the cache and the writer do
    # not account for is "other" (reading inputs, the driver); overlapping work (threads,
    # concurrent batches) can add up past the wall
    whole = max(wall, busy)
    extra.append(("other", wall - busy))

    def share(seconds: float) -> str:
        return f"{100 * seconds / whole:.1f}%" if whole > 0 else "-"

    for key, s in view.ordered():
        failed = Text(f"{s.failed:,}", style="red" if s.failed else "")
        name = "  " * (len(key) - 1) + key[-1]
        cells: list[str | Text] = [name, f"{s.items:,}", f"{s.cached:,}", failed]
        cells += [format_seconds(s.seconds), share(s.seconds), _number(s.rate)]
        table.add_row(*cells, *(s.tokens() if wide else ()))
    for name, seconds in extra:
        if seconds > 0 and (name != "other" or seconds / whole >= 0.001):
            row: list[str | Text] = [Text(f"({name})", style="dim"), "", "", ""]
            table.add_row(*row, format_seconds(seconds), share(seconds))
    parts: list[RenderableType] = [table]
    if tokens and not wide:
        parts.append(_tokens_table(view, width))
    parts += [Text(line) for line in _footer(view, counts, now, width)]
    return Group(*parts)


def _table(title: str, *columns: str, width: int) -> Table:
    """A table whose node names give way (cut with an ellipsis) so that the numbers fit."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    numbers = sum(max(8, len(name)) + 2 for name in columns) + 1
    table.add_column("node", no_wrap=True, overflow="ellipsis", max_width=max(8, width - numbers))
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    return table


def _tokens_table(view: RunView, width: int) -> Table:
    table = _table("tokens", "tokens (in + out)", "out tokens/s", width=width)
    for key, s in view.ordered():
        if s.prompt_tokens or s.completion_tokens:
            table.add_row("  " * (len(key) - 1) + key[-1], *s.tokens())
    return table


def _footer(view: RunView, counts: tuple[int, int, int], now: float, width: int) -> list[str]:
    """``10 items · 10 ok · 0 failed · 4.00s wall · 2.5 items/s``, wrapped at ``width``."""
    n_items, n_ok, n_failed = counts
    wall = now - view.t0
    parts = [f"{n_items:,} item{'' if n_items == 1 else 's'}", f"{n_ok:,} ok"]
    parts += [f"{n_failed:,} failed", f"{format_seconds(wall)} wall"]
    engines = view.engine_seconds(now)
    if engines > 0:
        parts[-1] += f", {format_seconds(engines)} of it starting engines"
    parts.append(format_rate(view.rate(now, n_items)))
    if view.skipped:
        stored = f"{view.skipped + n_ok:,}"
        of = "" if view.total is None else f" of {view.skipped + view.total:,}"
        parts.append(f"with the {view.skipped:,} stored before: {stored}{of} items stored")
    return fit_parts(parts, width)
