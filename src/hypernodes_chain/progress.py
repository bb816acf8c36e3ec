"""`ProgressCallback`: a rich view of a run or map: tree, live bars, summary table.

It reacts only to the core's events, which are per batch during ``map``, so watching a
million items costs a few hundred updates. Every number it shows (counts, node times,
rates, ETA) has one definition, in ``_progress_view``, and one clock, the injected
``get_time``: a fake clock makes the output exact.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import Progress
from rich.text import Text

from ._progress_view import (
    RunView,
    fit_parts,
    fitted_columns,
    format_rate,
    format_seconds,
    resumed_line,
    status_line,
    summary,
)
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

__all__ = ["ProgressCallback", "format_rate", "format_seconds"]


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

    Counts are this run's: after a resume the bars run over the items left, and the items
    stored before are said in words. Rates are items over the time the work took (engine
    starts left out); the ETA comes from the slowest step, once the run has a rate. Engine
    starts and stops (`EngineStarted`, `EngineStopped`) are one line each. While a run is
    on display, Hugging Face progress bars (model loading) are off, so they cannot break
    into the bars or leave carriage returns in a log. Where the console is not a terminal,
    printed lines carry no trailing spaces.

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
        self.plain = enabled is None and not self._interactive  # status lines, no bars
        self.enabled = True if enabled is None else enabled
        self._lock = threading.RLock()
        self._view: RunView | None = None
        self._bars_back: Callable[[], None] | None = None

    @property
    def _interactive(self) -> bool:
        return self.console.is_terminal or self.console.is_jupyter

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
        if view is None or event.path != view.root:
            return
        error = getattr(event, "error", None)
        counts = (event.n_items, event.n_ok, event.n_failed)
        if error is not None:  # the map stopped: count what the bars counted
            view.close_calls(self.get_time())
            ok = view.done - view.n_failed
            view.n_failed = max(view.n_failed, sum(s.failed for s in view.top_nodes()))
            view.done = ok + view.n_failed
            counts = (view.done, ok, view.n_failed)
        self._finish(event.graph, counts, error)

    def close(self) -> None:
        """Stop the live display of a run that never finished (it raised), if any."""
        with self._lock:
            view, self._view = self._view, None
            if view is not None and not self.plain:
                if self._interactive:
                    view.progress.refresh()  # the last frame (Jupyter keeps it)
                    view.progress.stop()
                elif not self.transient:  # a file: the bars once, in their final state
                    self._print(view.progress.get_renderable())
            if self._bars_back is not None:
                self._bars_back()
                self._bars_back = None

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
        now = self.get_time()
        seen = view.stop_timer(key, event.index)
        # the call ended now (or earlier, when its events come late from a worker thread)
        # and took ``duration``; its start as seen here counts where events come live
        start = now - event.duration if seen is None else min(seen, now - event.duration)
        if not event.cached:
            stats.add_call(start, now, view.engine_spans)
        stats.items += event.n_items
        stats.unfinished = 0  # the batch's failed items are among its n_items
        stats.cached += event.n_cached
        stats.prompt_tokens += event.prompt_tokens
        stats.completion_tokens += event.completion_tokens
        view.show_node(stats)
        if len(key) == 1:  # a step's pace moves the ETA
            view.show_overall(now)

    def on_node_failed(self, event: NodeFailed) -> None:
        view = self._view
        if view is None or event.path[:1] != view.root:
            return
        key = (*event.path[1:], event.node)
        stats = view.node(key)
        stats.failed += event.n_items  # a map's batch: one event for its failed items
        seen = view.stop_timer(key, event.index)
        if seen is not None:  # a run's node that raised: no NodeFinished follows
            stats.add_call(seen, self.get_time(), view.engine_spans)
            stats.items += 1
        else:  # a map's batch: counted by its NodeFinished, unless the map stops on it
            stats.unfinished += event.n_items
        view.show_node(stats)

    def on_batch_finished(self, event: BatchFinished) -> None:
        view = self._view
        if view is None or event.path != view.root or view.overall is None:
            return
        now = self.get_time()
        view.n_failed += event.n_failed
        view.done = event.n_done
        view.cache_seconds += event.cache_seconds
        view.write_seconds += event.write_seconds
        view.show_overall(now)
        if self.plain and now - view.last_line >= self.log_every:
            view.last_line = now
            self.console.print(status_line(view, now), highlight=False)

    def on_engine_started(self, event: EngineStarted) -> None:
        if self._view is not None:
            now = self.get_time()
            self._view.engine_spans.append((now - event.seconds, now))
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
        if skipped:
            for line in resumed_line(name, skipped, total):
                self.console.print(line, highlight=False)
        labels = [name]
        if graph is not None:
            labels += [("  " if is_map else "") + n.name for n in graph.nodes]
        rest = None if total is None else max(0, total - skipped)
        columns = fitted_columns(self.console.width, rest, labels, is_map=is_map)
        progress = Progress(
            *columns,
            console=self.console,
            transient=self.transient,
            auto_refresh=self._interactive,
            refresh_per_second=self.refresh_per_second,
            get_time=self.get_time,
        )
        self._bars_back = _quiet_hugging_face_bars()
        view = RunView(event.path, total, progress, is_map=is_map, skipped=skipped,
                       t0=self.get_time())  # fmt: skip
        view.expected = [n.name for n in graph.nodes] if graph is not None else []
        self._view = view
        if not self.plain and self._interactive:
            progress.start()

    def _finish(self, name: str, counts: tuple[int, int, int], error: Any) -> None:
        view = self._view
        assert view is not None
        now = self.get_time()  # one moment for the last frame and the summary
        for stats in view.nodes.values():
            view.show_node(stats)
        view.show_overall(now, ended=True)
        self.close()
        self._print(summary(view, name, counts, now, self.console.width))
        if error is not None:
            if isinstance(error, KeyboardInterrupt):
                said = "interrupted (Ctrl-C)"
            else:
                why = f": {error}" if str(error) else ""
                said = f"stopped by {type(error).__name__}{why}"
            for line in fit_parts(said.split(" · "), self.console.width):
                self.console.print(Text(line, style="red"))

    def _print(self, renderable: RenderableType) -> None:
        """Print ``renderable``; to a file, each line without the padding rich adds."""
        if self._interactive:
            self.console.print(renderable)
            return
        with self.console.capture() as capture:
            self.console.print(renderable)
        lines = capture.get().splitlines()
        self.console.out("\n".join(line.rstrip() for line in lines), highlight=False)


def _quiet_hugging_face_bars() -> Callable[[], None] | None:
    """Turn the tqdm bars of ``huggingface_hub`` (and so of ``transformers``, which asks
    it) off; returns how to turn them back on, or None when they were off or are not
    installed. Imported here so that a ``transformers`` imported later (a model loaded by
    an engine starting mid-run) finds them off too."""
    if "huggingface_hub" not in sys.modules and importlib.util.find_spec("huggingface_hub") is None:
        return None
    constants: Any = importlib.import_module("huggingface_hub.constants")
    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None:
        return None  # HF_HUB_DISABLE_PROGRESS_BARS is set: it decides, not us
    hub: Any = importlib.import_module("huggingface_hub.utils")
    if hub.are_progress_bars_disabled():
        return None
    hub.disable_progress_bars()
    transformers = sys.modules.get("transformers.utils.logging")
    was_on = transformers is not None and transformers.is_progress_bar_enabled()
    if was_on:
        transformers.disable_progress_bar()  # type: ignore[union-attr]

    def back() -> None:
        hub.enable_progress_bars()
        late: Any = sys.modules.get("transformers.utils.logging")
        if late is not None and (was_on or late is not transformers):
            late.enable_progress_bar()

    return back
