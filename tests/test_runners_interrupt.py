"""Ctrl-C in the programs under ``runners/``: one line that says what the folder holds and
the command that resumes it, no traceback, exit status 130; that command then finishes the
job, every row stored exactly once.

Each program runs as a subprocess with small sizes; the signal goes once its first shard is
committed (``000.parquet`` on disk)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.waiting import wait_until

RUNNERS = Path(__file__).parents[1] / "runners"

PROGRAMS = {
    "huge_batch_demo": (
        ["--rows", "400000", "--max-lines-per-file", "4000", "--batch-size", "1000"],
        400_000,
    ),
    "llm_reviews": (
        ["--rows", "600", "--max-lines-per-file", "32", "--batch-size", "16"],
        600,
    ),
}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def start(program: str, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    script = RUNNERS / f"{program}.py"
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_ctrl_c_says_what_is_stored_and_how_to_resume(program: str, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    if program == "llm_reviews":
        pytest.importorskip("transformers")
        pytest.importorskip("xgrammar")
    import pyarrow.parquet as pq

    args, rows = PROGRAMS[program]
    out = tmp_path / "out"
    proc = start(program, [*args, "--out", str(out)], tmp_path)
    try:
        first = out / "000.parquet"  # the first committed shard, or the child has ended
        wait_until(lambda: first.exists() or proc.poll() is not None, "a committed shard", 300)
        assert proc.poll() is None, f"{program} ended before the signal: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    said = stdout + stderr
    assert proc.returncode == 130, said[-3000:]
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said[-3000:]
    # the end: what is stored and the command, on lines of their own (continued with
    # backslashes) where they do not fit in the 80 columns of a pipe
    tail = stderr[stderr.rindex("interrupted: ") :]
    assert said.count("--resume") == 1 and tail.rstrip().endswith("--resume"), said[-3000:]
    state, command_text = tail.split("resume:", 1)
    assert all(len(line) <= 80 for line in tail.splitlines()), tail
    stored = int(state.split()[1].replace(",", ""))
    assert f" of {rows:,} " in state and f" stored in {out}/" in " ".join(state.split()), state
    assert stored == pq.read_table(out).num_rows > 0, state  # what it says is on disk
    command = shlex.split(command_text.replace("\\\n", " "))
    assert command[-1] == "--resume"
    done = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{stored:,} already done" in done.stdout, done.stdout
    indices = sorted(pq.read_table(out, columns=["_index"]).column("_index").to_pylist())
    assert indices == list(range(rows))  # complete, every row once
