"""The ``hypernodes-chain`` command line: run a graph over a file of records, or inspect it.

::

    hypernodes-chain run FILE.py:GRAPH INPUTS OUT_DIR [--map-over a,b] [--set name=value]
                         [--format jsonl|parquet] [--max-lines-per-file N] [--batch-size N]
                         [--cache DIR] [--resume] [--on-error raise|collect]
                         [--runner sync|async|dask] [--scheduler ADDRESS]
                         [--engine NAME=SPEC ...]
                         [--quiet | --verbose | --json-logs]
    hypernodes-chain inspect FILE.py:GRAPH

``FILE.py`` alone (no ``:GRAPH``) is a module of Apache Hamilton functions, turned into a
graph by `hypernodes_chain.hamilton.from_modules` with ``--config KEY=VALUE`` items;
``--outputs a,b`` keeps what those outputs need (Hamilton's ``final_vars``).

``FILE.py`` is imported from its path (its folder is put on ``sys.path``); ``GRAPH`` names a
`Graph` at its top level. ``INPUTS`` is a jsonl, parquet or csv file, or a folder of such
shards, read lazily: each record is one item and its fields are the graph's inputs. By default
every field is mapped over, and a field the graph does not read is an error (a typo would
otherwise silently go unused), except ``_index`` (the item index in an earlier run's output,
which can thus be read back); ``--map-over`` picks the fields to read and ignores the rest.
``--set name=value`` gives a constant input (the value parsed as JSON, else kept as text).

The engines of the graph's LLM nodes come from the file's top-level ``engines`` (an
`EngineBroker`, or a dict of name -> engine or zero-argument factory); ``--engine NAME=SPEC``
adds or replaces the one named NAME: ``ollama:NAME[@HOST]``, ``vllm:MODEL``,
``vllm+server:MODEL``, ``transformers:PATH`` or ``openai:URL@MODEL`` (see
`hypernodes_chain.engines.engine_from_spec`). ``inspect`` lists the engines the graph uses.

Results stream into ``OUT_DIR`` through a `StreamWriter` (shards, ``_manifest.json``,
``_errors/``). Exit codes: 0 done (also when ``--on-error collect`` recorded failures), 1 a node
failed (``--on-error raise``) or something unexpected broke, 2 a usage error (bad
``FILE.py:GRAPH``, a missing file or graph, unknown columns, a bad ``--engine`` spec, a NAME
no LLM node uses or an engine the graph needs that nothing gives, an output folder that needs
``--resume``), 130 interrupted. Errors are one line on stderr; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli_errors import CliError, InputRecordError, one_line
from ._cli_inputs import (
    ShardFormat,
    choose_map_over,
    input_columns,
    is_shard_format,
    manifest_format,
    map_inputs,
    open_reader,
    parse_sets,
)
from ._cli_load import graph_engines, load_graph, load_target, run_engines

__all__ = ["CliError", "load_graph", "main"]

PROG = "hypernodes-chain"


# --------------------------------------------------------------------------- display
def _progress_callback(graph: Any, verbose: bool) -> Any:
    """The rich display on stderr: on in a terminal (or Jupyter), always with ``--verbose``."""
    try:
        from .progress import ProgressCallback
    except ImportError:  # pragma: no cover - the display is optional
        return None
    return ProgressCallback(graph=graph, enabled=True if verbose else None)


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


# --------------------------------------------------------------------------- commands
def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .viz import rich_tree

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


def _output_format(args: argparse.Namespace, out: Path) -> ShardFormat:
    """``--format``, else (with ``--resume``) the format of the folder's earlier run, else jsonl."""
    if is_shard_format(args.format):  # argparse's choices: None when not given
        return args.format
    if args.resume:
        existing = manifest_format(out)
        if existing is not None:
            return existing
    return "jsonl"


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
    from . import AsyncRunner, DaskRunner, Runner

    if args.runner == "async":
        return asyncio.run(AsyncRunner(**settings).map(graph, inputs, **map_kwargs))
    if args.runner == "dask":
        with DaskRunner(args.scheduler, **settings) as dask:
            return dask.map(graph, inputs, **map_kwargs)
    with Runner(**settings) as runner:
        return runner.map(graph, inputs, **map_kwargs)


def _ship_by_value(module: Any) -> None:
    """Dask workers cannot import FILE.py (it was loaded by path): its functions travel
    with cloudpickle by value."""
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError:
        raise CliError("--runner dask needs dask: pip install 'hypernodes-chain[dask]'") from None
    cloudpickle.register_pickle_by_value(module)


def cmd_run(args: argparse.Namespace) -> int:
    from . import DiskCache
    from .io import StreamWriter

    if args.scheduler is not None and args.runner != "dask":
        raise CliError("--scheduler is for --runner dask")
    outputs = None
    if args.outputs is not None:
        outputs = [n.strip() for n in args.outputs.split(",") if n.strip()]
        if not outputs:
            raise CliError("--outputs names no output")
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
    map_over = None
    if args.map_over is not None:
        map_over = [n.strip() for n in args.map_over.split(",") if n.strip()]
        if not map_over:
            raise CliError("--map-over is empty: give comma-separated column names")
    source = repr(str(inputs_path))
    chosen = choose_map_over(graph, input_columns(fmt, reader), map_over, constants, source)
    out_format = _output_format(args, out)
    if out.exists() and not out.is_dir():
        raise CliError(f"output folder {str(out)!r} is a file")
    if out.resolve() == inputs_path.resolve():
        raise CliError(f"OUT_DIR {str(out)!r} is the INPUTS folder; write somewhere else")
    if not args.resume and any((out / n).exists() for n in ("_manifest.json", "manifest.json")):
        raise CliError(
            f"output folder {str(out)!r} already holds a run; pass --resume to continue it, "
            f"or choose a new folder"
        )

    callbacks: list[Any] = []
    if args.json_logs:
        from .jsonlog import JsonLogCallback

        callbacks.append(JsonLogCallback(sys.stderr))
    elif not args.quiet:
        progress = _progress_callback(graph, args.verbose)
        if progress is not None:
            callbacks.append(progress)
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
        try:
            if engines is not None:
                engines.close()  # unload the models now, not at interpreter exit
        finally:
            for callback in callbacks:  # stop a live display, flush the logs
                close = getattr(callback, "close", None)
                if close is not None:
                    close()
    if args.json_logs:
        sys.stdout.write(json.dumps(summary_record(result, out)) + "\n")
    elif not args.quiet:
        sys.stdout.write(summary_line(result, out) + "\n")
        if result.n_failed:
            sys.stdout.write(f"failures: {out / '_errors'}\n")
    elif result.n_failed:  # --quiet: still say that items failed
        sys.stderr.write(f"{result.n_failed:,} items failed; see {out / '_errors'}\n")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- parsing
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a hypernodes_chain graph over a file of records, or inspect it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="map a graph over INPUTS, streaming results into OUT_DIR",
        description=(
            "Map GRAPH over the records of INPUTS (a .jsonl, .parquet or .csv file, or a folder "
            "of them), one item per record, streaming the results into sharded files in OUT_DIR."
        ),
        epilog=(
            "exit status: 0 done (also when --on-error collect recorded failed items: they are "
            "in OUT_DIR/_errors/ and the summary counts them); 1 a node failed under --on-error "
            "raise, or something unexpected broke; 2 a usage error; 130 interrupted (rerun with "
            "--resume)"
        ),
    )
    run.add_argument(
        "graph",
        metavar="FILE.py:GRAPH",
        help="the file and the Graph in it; or FILE.py, a module of Hamilton functions",
    )
    run.add_argument("inputs", metavar="INPUTS", help="records: a jsonl/parquet/csv file or folder")
    run.add_argument("out_dir", metavar="OUT_DIR", help="folder for the shards and _manifest.json")
    run.add_argument(
        "--map-over",
        metavar="A,B",
        help="columns to map over (default: every column; each must be a graph input)",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a constant input; VALUE is parsed as JSON, else taken as text (repeatable)",
    )
    run.add_argument(
        "--format",
        choices=("jsonl", "parquet"),
        help="shard format (default: jsonl, or the existing folder's with --resume)",
    )
    run.add_argument(
        "--max-lines-per-file",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="rows per output shard (default: 100,000)",
    )
    run.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="items per batch: each node runs once per batch, and a batch is committed to "
        "OUT_DIR at once (default: 1,024)",
    )
    run.add_argument("--cache", metavar="DIR", help="cache node results in a DiskCache at DIR")
    run.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=("yes", "force"),
        metavar="force",
        help=(
            "continue OUT_DIR: skip the items already stored, compute failed ones again; "
            "'--resume force' also continues a folder written by other node code"
        ),
    )
    run.add_argument(
        "--on-error",
        choices=("raise", "collect"),
        default="raise",
        help="raise: stop at the first failure (default); collect: record it in OUT_DIR/_errors/",
    )
    run.add_argument(
        "--runner",
        choices=("sync", "async", "dask"),
        default="sync",
        help="sync: Runner (default); async: AsyncRunner; dask: DaskRunner (extra 'dask')",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --runner dask: the scheduler to use (tcp://host:8786); default: a local "
        "cluster of worker processes, one per core",
    )
    run.add_argument(
        "--config",
        action="append",
        metavar="KEY=VALUE",
        help="for a FILE.py of Hamilton functions (no Graph in it): a config item; VALUE is "
        "parsed as JSON, else taken as text (repeatable)",
    )
    run.add_argument(
        "--outputs",
        metavar="A,B",
        help="the outputs to compute and write (default: every output of the graph)",
    )
    run.add_argument(
        "--engine",
        action="append",
        metavar="NAME=SPEC",
        help=(
            "the engine of the LLM nodes that name NAME, over the file's 'engines': "
            "ollama:NAME[@HOST], vllm:MODEL, vllm+server:MODEL, transformers:PATH or "
            "openai:URL@MODEL (repeatable)"
        ),
    )
    _add_output_flags(run)
    run.set_defaults(func=cmd_run)

    inspect = sub.add_parser(
        "inspect",
        help="print a graph's tree, inputs and outputs (runs nothing)",
        description="Print the graph's tree, its inputs and outputs. Runs nothing.",
    )
    inspect.add_argument("graph", metavar="FILE.py:GRAPH")
    inspect.add_argument(
        "--config",
        action="append",
        metavar="KEY=VALUE",
        help="Hamilton config item for a FILE.py that defines no Graph (repeatable)",
    )
    inspect.add_argument("--verbose", "-v", action="store_true", help="tracebacks on errors")
    inspect.set_defaults(func=cmd_inspect, quiet=False, json_logs=False)
    return parser


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing on success (errors still)"
    )
    group.add_argument(
        "--verbose", "-v", action="store_true", help="progress display; tracebacks on errors"
    )
    group.add_argument(
        "--json-logs",
        action="store_true",
        help="one JSON object per event on stderr; the summary as JSON on stdout",
    )


def _fail(message: str, args: argparse.Namespace, code: int) -> int:
    """Report an error on stderr: one line (one JSON object with ``--json-logs``)."""
    if getattr(args, "verbose", False):
        traceback.print_exc()
    if getattr(args, "json_logs", False):
        record = {"event": "Error", "message": message, "exit_code": code}
        sys.stderr.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    from .exceptions import NodeError, PlanError, ResumeError, WriterLockedError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        return _fail(str(exc), args, 2)
    except NodeError as exc:
        hint = ""
        if args.command == "run":
            hint = f" (finished shards are kept: rerun with --resume to continue {args.out_dir})"
        return _fail(one_line(exc) + hint, args, 1)
    except (InputRecordError, PlanError) as exc:
        return _fail(one_line(exc), args, 2)
    except (FileExistsError, FileNotFoundError, ResumeError, WriterLockedError) as exc:
        # The writer refusing a folder: not a run's, other code, or another writer's.
        text = one_line(exc).replace("resume=True", "--resume")
        return _fail(text.replace("resume='force'", "--resume force"), args, 2)
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted")
        if getattr(args, "command", None) == "run":
            sys.stderr.write(f"; rerun with --resume to continue {args.out_dir}")
        sys.stderr.write("\n")
        return 130
    except Exception as exc:
        return _fail(f"{type(exc).__name__}: {one_line(exc)}", args, 1)
