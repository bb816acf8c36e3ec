"""The commands: ``run`` (map a graph over INPUTS into OUT_DIR) and ``inspect``.

Each takes the parsed arguments and returns the exit code; a usage error is a `CliError`,
raised before anything runs or is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .._optional import optional
from ..exceptions import CliError
from ._engines import graph_engines, run_engines
from ._inputs import (
    ShardFormat,
    choose_map_over,
    input_columns,
    is_shard_format,
    manifest_format,
    map_inputs,
    open_reader,
    parse_sets,
)
from ._load import load_graph, load_target

__all__ = ["cmd_inspect", "cmd_run", "summary_line", "summary_record"]


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..viz import rich_tree

    graph = load_graph(args.graph, args.config or [])
    console = Console(highlight=False, soft_wrap=False)
    console.print(rich_tree(graph))
    out = sys.stdout
    out.write(f"inputs: {', '.join(graph.inputs) or '-'}\n")
    out.write(f"optional inputs: {', '.join(graph.optional_inputs) or '-'}\n")
    out.write(f"outputs: {', '.join(graph.outputs) or '-'}\n")
    engines = graph_engines(graph)
    if engines:  # a graph without LLM nodes prints no engines line
        out.write(f"engines: {', '.join(engines)}\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .. import DiskCache
    from ..io import StreamWriter

    if args.scheduler is not None and args.runner != "dask":
        raise CliError("--scheduler is for --runner dask")
    outputs = _name_list(args.outputs, "--outputs names no output")
    graph, module, path = load_target(args.graph, args.config or [], outputs)
    if outputs is not None:
        unknown = [n for n in outputs if n not in graph.outputs]
        if unknown:
            raise CliError(f"--outputs: {unknown} are not outputs of the graph: {graph.outputs}")
    engines = run_engines(graph, module, path, args.engine or [])
    if args.runner == "dask":
        _ship_by_value(module)
    inputs_path, out = Path(args.inputs), Path(args.out_dir)
    fmt, reader = open_reader(inputs_path, graph)
    constants = parse_sets(args.set or [])
    map_over = _name_list(args.map_over, "--map-over is empty: give comma-separated column names")
    source = repr(str(inputs_path))
    chosen = choose_map_over(graph, input_columns(fmt, reader), map_over, constants, source)
    out_format = _output_format(args, out)
    _check_out_dir(out, inputs_path, args.resume)

    callbacks = _callbacks(args, graph)
    cache = DiskCache(args.cache) if args.cache else None
    writer = StreamWriter(
        out,
        format=out_format,
        max_lines_per_file=args.max_lines_per_file,
        resume="force" if args.resume == "force" else bool(args.resume),
    )
    inputs: dict[str, Any] = {**constants, **map_inputs(fmt, reader, chosen, args.batch_size)}
    settings = {"cache": cache, "callbacks": callbacks, "engines": engines}
    kwargs = {
        "map_over": chosen,
        "batch_size": args.batch_size,
        "writer": writer,
        "on_error": args.on_error,
        "output_name": outputs,
    }
    try:
        result = _map(args, graph, inputs, settings, kwargs)
    finally:
        _close(engines, callbacks)
    _summarize(args, result, out)
    return 0


def _name_list(text: str | None, empty: str) -> list[str] | None:
    """A comma-separated option as names (None when not given); `CliError` ``empty`` when
    it names none."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CliError(empty)
    return names


def _output_format(args: argparse.Namespace, out: Path) -> ShardFormat:
    """``--format``, else (with ``--resume``) the format of the folder's earlier run, else jsonl."""
    if is_shard_format(args.format):  # argparse's choices: None when not given
        return args.format
    if args.resume:
        existing = manifest_format(out)
        if existing is not None:
            return existing
    return "jsonl"


def _check_out_dir(out: Path, inputs_path: Path, resume: str | None) -> None:
    if out.exists() and not out.is_dir():
        raise CliError(f"output folder {str(out)!r} is a file")
    if out.resolve() == inputs_path.resolve():
        raise CliError(f"OUT_DIR {str(out)!r} is the INPUTS folder; write somewhere else")
    if not resume and any((out / n).exists() for n in ("_manifest.json", "manifest.json")):
        raise CliError(
            f"output folder {str(out)!r} already holds a run; pass --resume to continue it, "
            f"or choose a new folder"
        )


def _ship_by_value(module: Any) -> None:
    """Dask workers cannot import FILE.py (it was loaded by path): its functions travel
    with cloudpickle by value."""
    try:
        cloudpickle = optional("cloudpickle", "--runner dask", "dask")
    except ImportError:
        raise CliError("--runner dask needs dask: pip install 'hypernodes-chain[dask]'") from None
    cloudpickle.register_pickle_by_value(module)


def _map(
    args: argparse.Namespace,
    graph: Any,
    inputs: dict[str, Any],
    settings: dict[str, Any],
    map_kwargs: dict[str, Any],
) -> Any:
    """Map with the runner ``--runner`` names: the one place runners are built.

    ``settings`` are the runner's (``cache``, ``callbacks``, ``engines``), ``map_kwargs``
    its ``map``'s."""
    from .. import AsyncRunner, DaskRunner, Runner

    if args.runner == "async":
        return asyncio.run(AsyncRunner(**settings).map(graph, inputs, **map_kwargs))
    if args.runner == "dask":
        with DaskRunner(args.scheduler, **settings) as dask:
            return dask.map(graph, inputs, **map_kwargs)
    with Runner(**settings) as runner:
        return runner.map(graph, inputs, **map_kwargs)


# --------------------------------------------------------------------------- display
def _callbacks(args: argparse.Namespace, graph: Any) -> list[Any]:
    """JSON logs on stderr (``--json-logs``), else the progress display unless ``--quiet``."""
    callbacks: list[Any] = []
    if args.json_logs:
        from ..jsonlog import JsonLogCallback

        callbacks.append(JsonLogCallback(sys.stderr))
    elif not args.quiet:
        progress = _progress_callback(graph, args.verbose)
        if progress is not None:
            callbacks.append(progress)
    return callbacks


def _progress_callback(graph: Any, verbose: bool) -> Any:
    """The rich display on stderr: on in a terminal (or Jupyter), always with ``--verbose``."""
    try:
        from ..progress import ProgressCallback
    except ImportError:  # pragma: no cover - the display is optional
        return None
    return ProgressCallback(graph=graph, enabled=True if verbose else None)


def _close(engines: Any, callbacks: list[Any]) -> None:
    try:
        if engines is not None:
            engines.close()  # unload the models now, not at interpreter exit
    finally:
        for callback in callbacks:  # stop a live display, flush the logs
            close = getattr(callback, "close", None)
            if close is not None:
                close()


def _summarize(args: argparse.Namespace, result: Any, out: Path) -> None:
    if args.json_logs:
        sys.stdout.write(json.dumps(summary_record(result, out)) + "\n")
    elif not args.quiet:
        sys.stdout.write(summary_line(result, out) + "\n")
        if result.n_failed:
            sys.stdout.write(f"failures: {out / '_errors'}\n")
    elif result.n_failed:  # --quiet: still say that items failed
        sys.stderr.write(f"{result.n_failed:,} items failed; see {out / '_errors'}\n")
    sys.stdout.flush()


def summary_line(result: Any, out: Path) -> str:
    files = len(result.files)
    done = f"; {result.n_skipped:,} already done" if result.n_skipped else ""
    items = f"{result.n_items:,} item{'s' if result.n_items != 1 else ''}"
    total = ""
    if result.n_skipped:  # a resumed run: the folder holds more than this run did
        total = f"; folder: {result.total_ok:,} ok, {result.total_failed:,} failed"
    return (
        f"done: {items} ({result.n_ok:,} ok, {result.n_failed:,} failed{done}{total}), "
        f"{files} file{'s' if files != 1 else ''}, {result.duration_s:.2f} s -> {out}"
    )


def summary_record(result: Any, out: Path) -> dict[str, Any]:
    return {
        "event": "Summary",
        "items": result.n_items,
        "ok": result.n_ok,
        "failed": result.n_failed,
        "skipped": result.n_skipped,
        "total_ok": result.total_ok,
        "total_failed": result.total_failed,
        "files": [str(f) for f in result.files],
        "seconds": round(result.duration_s, 6),
        "out": str(out),
    }
