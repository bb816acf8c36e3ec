"""The terminal helpers of ready-to-run programs: wrapped resume commands paste as one."""

from __future__ import annotations

import shlex
import subprocess

from hypernodes_chain.programs import printable, resume_command, shell_lines


def test_a_long_command_is_cut_into_lines_that_a_shell_reads_as_one() -> None:
    command = ["python", "runners/llm_reviews.py", "--out", "a folder/with spaces", *["--x"] * 30]
    lines = shell_lines(command, 40)
    assert len(lines) > 1 and all(len(line) <= 40 for line in lines)
    echoed = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + "\n".join(lines)[len("python") :]],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert echoed.stdout.splitlines() == command[1:]


def test_the_resume_command_adds_resume_once() -> None:
    command = resume_command("runners/demo.py", ["--rows", "10", "--resume"])
    assert command[1].endswith("demo.py") and command[2:] == ["--rows", "10", "--resume"]
    assert shlex.split(shlex.join(command)) == command


def test_printable_escapes_control_characters_only() -> None:
    assert printable("a\x0eb\x1fc\x7fd é\t") == "a\\x0eb\\x1fc\\x7fd é\\t"
