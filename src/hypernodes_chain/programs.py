"""What a ready-to-run program built on hypernodes_chain says on a terminal: lines wrapped at
its width, text printed safely, and the one message of a Ctrl-C (what the output folder holds
and the exact command that resumes the run, exit status 130).

The programs under ``runners/`` use these, so every program ends an interrupt the same way::

    try:
        result = runner.map(graph, inputs, map_over="text", writer=writer)
    except KeyboardInterrupt:
        return interrupted(out, "reviews", total, writer, __file__, argv)
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

__all__ = ["finished", "interrupted", "printable", "resume_command", "say", "shell_lines"]


def say(text: str, *, file: TextIO | None = None) -> None:
    """Print ``text`` wrapped at the terminal's width (80 columns when piped)."""
    width = shutil.get_terminal_size().columns
    lines = textwrap.wrap(
        text, width - 1, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )
    print("\n".join(lines), file=file or sys.stdout, flush=True)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x0e``), so printing it cannot garble a
    terminal; the data itself stays as it was."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def resume_command(script: str, argv: list[str]) -> list[str]:
    """The command line that continues a run of ``script``: its arguments plus
    ``--resume`` (``python`` where that is this interpreter, the script's path relative to
    here unless it lies above)."""
    python = sys.executable
    if shutil.which("python") == python:
        python = "python"
    path = os.path.relpath(script)
    if path.startswith(".."):
        path = os.path.abspath(script)
    return [python, path, *[a for a in argv if a != "--resume"], "--resume"]


def shell_lines(command: list[str], width: int) -> list[str]:
    """``command`` quoted for a shell, cut into lines of at most ``width`` characters that
    end in a line continuation (``\\``), so that it pastes as one command."""
    lines = [""]
    for word in map(shlex.quote, command):
        if lines[-1].strip() and len(lines[-1]) + len(word) + 3 > width:
            lines[-1] += " \\"
            lines.append("  ")
        lines[-1] += ("" if not lines[-1].strip() else " ") + word
    return lines


def interrupted(out: Path, what: str, total: int, writer: Any, script: str, argv: list[str]) -> int:
    """After a Ctrl-C: close ``writer`` (what is buffered is committed), say on stderr how
    many of ``total`` ``what`` the folder ``out`` holds and the command that resumes the run;
    returns 130, the exit status of an interrupt."""
    held = writer.close(finished=False) if writer is not None else None
    stored = held.total_ok if held is not None else 0
    said = f"interrupted: {stored:,} of {total:,} {what} are stored in {out}/; resume: "
    command = resume_command(script, argv)
    width = shutil.get_terminal_size().columns - 1
    one = said + shlex.join(command)
    if len(one) <= width:
        print(one, file=sys.stderr, flush=True)
    else:  # the command on lines of its own, continued with backslashes
        say(said.rstrip(), file=sys.stderr)
        print("\n".join(shell_lines(command, width)), file=sys.stderr, flush=True)
    return 130


def finished(result: Any, out: Path, what: str, fmt: str, *, quiet: bool = False) -> None:
    """Say the counts of a finished map (``result``, a `MapResult` with a writer's files):
    items, ok, failed, skipped, the shards in ``out`` and where failures are; with ``quiet``
    (no progress summary printed) the time it took too."""
    shards = f"{len(result.files)} {fmt} shard{'' if len(result.files) == 1 else 's'}"
    skipped = f"; {result.n_skipped:,} already done" if result.n_skipped else ""
    took = f" in {result.duration_s:.2f} s" if quiet else ""
    errors = f", failures in {out}/_errors/" if result.n_failed else ""
    say(f"done: {result.n_items:,} {what} ({result.n_ok:,} ok, {result.n_failed:,} failed"
        f"{skipped}){took} -> {shards} in {out}/{errors}")  # fmt: skip
