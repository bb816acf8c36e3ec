"""The argument parser of ``hypernodes-chain``: ``run`` and ``inspect``, and their options."""

from __future__ import annotations

import argparse

from ._commands import cmd_inspect, cmd_run
from ._errors import PROG

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The parser; each command's ``func`` runs it and returns the exit code."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a hypernodes_chain graph over a file of records, or inspect it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_run(sub)
    _add_inspect(sub)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _add_input_flags(run)
    _add_writer_flags(run)
    _add_runner_flags(run)
    _add_graph_flags(run)
    _add_output_flags(run)
    run.set_defaults(func=cmd_run)


def _add_input_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--map-over",
        metavar="A,B",
        help="columns to map over, zipped row by row (default: every column; each must be a "
        "graph input); with it, the other columns the graph reads come along and the columns "
        "it does not read are left out",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a constant input; VALUE is parsed as JSON, else taken as text (repeatable)",
    )


def _add_writer_flags(run: argparse.ArgumentParser) -> None:
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


def _add_runner_flags(run: argparse.ArgumentParser) -> None:
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


def _add_graph_flags(run: argparse.ArgumentParser) -> None:
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


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
