"""The LLM main job, end to end: a tiny model built on the spot, reviews to parquet."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")

JOB = Path(__file__).parents[2] / "runners" / "llm_reviews.py"


@pytest.fixture(autouse=True)
def _hugging_face_state_restored():
    """The job quiets Hugging Face for its whole process (an environment variable, the
    transformers bars): in this test process, undo that for the tests that follow."""
    import os

    before = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    yield
    if before is None:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = before
    logging = sys.modules.get("transformers.utils.logging")
    if logging is not None:
        logging.enable_progress_bar()


def load_job():
    spec = importlib.util.spec_from_file_location("llm_reviews_job", JOB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_job_writes_validated_summaries_and_resumes(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import pyarrow.parquet as pq

    job = load_job()
    monkeypatch.chdir(tmp_path)  # short paths: what it says fits in 80 columns
    out = tmp_path / "out"
    argv = ["--rows", "40", "--out", "out", "--batch-size", "16", "--quiet"]
    assert job.main(argv) == 0
    said = capsys.readouterr()
    assert "a tiny random Llama (built just now," in said.out
    assert "done: 40 reviews (40 ok, 0 failed) in " in said.out
    assert "\r" not in said.out + said.err, "no Hugging Face progress bars"
    assert max(len(line) for line in said.out.splitlines()) <= 80, said.out
    table = pq.read_table(out)
    assert table.num_rows == 40 and sorted(table.column("_index").to_pylist()) == list(range(40))
    assert set(table.column("summary.sentiment").to_pylist()) <= {"positive", "negative", "neutral"}
    assert all(1 <= s <= 5 for s in table.column("summary.stars").to_pylist())
    assert all(len(t) <= 24 for t in table.column("summary.title").to_pylist())
    assert job.main([*argv, "--resume"]) == 0  # nothing left to do
    said = capsys.readouterr().out
    assert "done: 0 reviews (0 ok, 0 failed; 40 already done)" in said
    assert "a tiny random Llama (built by an earlier run," in said


def test_printed_titles_escape_control_characters(tmp_path: Path, capsys) -> None:
    import pyarrow.parquet as pq

    job = load_job()
    assert job.printable("a\x0eb\x1fc\x7fd é") == "a\\x0eb\\x1fc\\x7fd é"
    out = tmp_path / "out"
    assert job.main(["--rows", "64", "--out", str(out), "--batch-size", "32", "--quiet"]) == 0
    said = capsys.readouterr().out
    shown = [line for line in said.splitlines() if line.startswith("  #")]
    assert len(shown) == 3, said
    assert all(c.isprintable() for line in shown for c in line), shown
    titles = pq.read_table(out).sort_by("_index").column("summary.title").to_pylist()[:3]
    for line, title in zip(shown, titles):  # the data stays as the model wrote it
        assert line.endswith(f"title {job.printable(title)}"), (line, title)
