"""The README opens with the two commands that work on a fresh machine; CI runs the second."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    main_job, tests = blocks[0], blocks[1]
    assert "runners/llm_reviews.py" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert tests in ci, "CI does not run the README's test command"
    # whatever CI does besides (installing `dot`, the vLLM module in its own venv) leaves the
    # README's command as it is; after it, the main venv runs only the slow tests
    later = ci[ci.index(tests) + 1 :]
    main_venv = [line for line in later if line.startswith(".venv/bin/")]
    assert main_venv == [".venv/bin/python -m pytest -q -m slow"]


def test_main_job_programs_exist():
    assert (ROOT / "runners" / "llm_reviews.py").is_file()
    assert (ROOT / "runners" / "huge_batch_demo.py").is_file()
