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

The parts: ``_parser`` (the options), ``_commands`` (``run`` and ``inspect``), ``_load``
(importing ``FILE.py``, finding the graph), ``_engines`` (the run's engines), ``_inputs``
(reading ``INPUTS``), ``_errors`` (error lines and exit codes).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..exceptions import CliError
from ._errors import interrupted, report
from ._inputs import map_inputs
from ._load import load_graph
from ._parser import build_parser

__all__ = ["CliError", "build_parser", "load_graph", "main", "map_inputs"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return interrupted(args)
    except Exception as exc:
        return report(exc, args)
