"""Errors as the command line reports them: one line on stderr (one JSON object with
``--json-logs``, the traceback before it with ``--verbose``) and an exit code.

Exit codes: 1 a node failed or something unexpected broke, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from ..exceptions import (
    CliError,
    InputRecordError,
    NodeError,
    PlanError,
    ResumeError,
    WriterLockedError,
)

__all__ = ["PROG", "interrupted", "one_line", "report"]

PROG = "hypernodes-chain"


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line; its type name when the message is empty."""
    return " ".join(str(exc).split()) or type(exc).__name__


def report(exc: Exception, args: argparse.Namespace) -> int:
    """Report ``exc``, the error being handled, on stderr; returns the exit code."""
    if isinstance(exc, CliError):
        return _fail(str(exc), args, 2)
    if isinstance(exc, NodeError):
        hint = ""
        if args.command == "run":
            hint = f" (finished shards are kept: rerun with --resume to continue {args.out_dir})"
        return _fail(one_line(exc) + hint, args, 1)
    if isinstance(exc, InputRecordError | PlanError):
        return _fail(one_line(exc), args, 2)
    if isinstance(exc, FileExistsError | FileNotFoundError | ResumeError | WriterLockedError):
        # The writer refusing a folder: not a run's, other code, or another writer's.
        text = one_line(exc).replace("resume=True", "--resume")
        return _fail(text.replace("resume='force'", "--resume force"), args, 2)
    return _fail(f"{type(exc).__name__}: {one_line(exc)}", args, 1)


def interrupted(args: argparse.Namespace) -> int:
    """Say on stderr that the run was interrupted, and how to continue it; exit code 130."""
    sys.stderr.write(f"\n{PROG}: interrupted")
    if getattr(args, "command", None) == "run":
        sys.stderr.write(f"; rerun with --resume to continue {args.out_dir}")
    sys.stderr.write("\n")
    return 130


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
