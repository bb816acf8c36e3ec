"""The command line: ``hypernodes-chain run / inspect``.

Most tests call ``hypernodes_chain.cli.main(argv)`` in-process (the ``cli`` fixture: its own
working directory, environment, ``sys.path`` and captured stdout/stderr). The tests marked
"subprocess" run ``python -m hypernodes_chain`` for real, for what only a process shows: the
exit status, ``python -m``, and that ``--quiet`` writes nothing to the real streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hypernodes_chain.io import read_jsonl, read_parquet

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "runners" / "huge_batch_demo.py"
SAMPLE = ROOT / "runners" / "sample_data" / "reviews.jsonl"
DEMO_OUTPUTS = [
    "cleaned",
    "features.n_words",
    "features.n_chars",
    "features.n_positive",
    "features.n_negative",
    "score",
    "label",
]

PIPE = """
import os

from hypernodes_chain import Graph, node

FAIL_AT = int(os.environ.get("HNC_TEST_FAIL_AT", "-1"))


@node(output_name="y")
def inc(x: int, k: int = 1) -> int:
    if x == FAIL_AT:
        raise ValueError(f"item {x} is bad")
    return x + k


@node(output_name="z")
def mul(y: int, w: float) -> float:
    return y * w


graph = Graph(nodes=[inc, mul], name="pipe")
other = Graph(nodes=[inc], name="other")
not_a_graph = 3
"""


def subprocess_cli(*args: object, cwd: Path, env: dict[str, str] | None = None):
    """Run ``python -m hypernodes_chain ARGS`` and return the completed process."""
    full_env = {k: v for k, v in os.environ.items() if k != "HNC_TEST_FAIL_AT"}
    full_env.update(COLUMNS="100", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "hypernodes_chain", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Ran(NamedTuple):
    """What ``main`` returned (or exited with) and what it wrote, like a completed process."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``cli(*args, cwd=..., env=...)``: ``main(argv)`` in-process, as ``subprocess_cli`` would
    run it: in ``cwd``, with ``COLUMNS=100`` and ``env``, without ``HNC_TEST_FAIL_AT`` otherwise.
    The working directory, environment and ``sys.path`` are restored after each call, and the
    graph files it imported are dropped from ``sys.modules`` (the next call imports them again)."""
    from hypernodes_chain.cli import main

    def run(*args: object, cwd: Path, env: dict[str, str] | None = None) -> Ran:
        before = set(sys.modules)
        with monkeypatch.context() as m:
            m.chdir(cwd)
            m.delenv("HNC_TEST_FAIL_AT", raising=False)
            m.setenv("COLUMNS", "100")
            for key, value in (env or {}).items():
                m.setenv(key, value)
            m.setattr(sys, "path", list(sys.path))
            capsys.readouterr()
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse: --version, usage errors
                code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
            out, err = capsys.readouterr()
        roots = (str(Path(cwd).resolve()), str(DEMO.parent))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if str(Path(file).resolve()).startswith(roots):
                del sys.modules[name]
        return Ran(int(code), out, err)

    return run


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "pipe.py").write_text(textwrap.dedent(PIPE))
    with open(tmp_path / "numbers.jsonl", "w") as f:
        for x in range(200):
            f.write(json.dumps({"x": x, "w": 0.5}) + "\n")
    return tmp_path


def manifest(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text())


def indices(folder: Path, fmt: str) -> list[int]:
    reader = read_parquet(folder) if fmt == "parquet" else read_jsonl(folder)
    return list(reader.column("_index"))


def error_line(proc: Ran | subprocess.CompletedProcess[str]) -> str:
    """The one error line, last on stderr (after the plain progress lines and summary
    that a non-terminal stderr gets), with no traceback anywhere."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("hypernodes-chain: error")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


# --------------------------------------------------------------------------- run
@pytest.mark.parametrize("out_format", ["jsonl", "parquet"])
@pytest.mark.parametrize("in_format", ["jsonl", "parquet"])
def test_run_demo_graph_into_shards(cli, tmp_path: Path, in_format: str, out_format: str) -> None:
    if in_format == "jsonl":
        inputs = SAMPLE
    else:  # the sample as a folder of two parquet shards
        inputs = tmp_path / "in"
        inputs.mkdir()
        rows = list(read_jsonl(SAMPLE))
        pq.write_table(pa.Table.from_pylist(rows[:120]), inputs / "part-0.parquet")
        pq.write_table(pa.Table.from_pylist(rows[120:]), inputs / "part-1.parquet")
    out = tmp_path / "out"
    proc = cli(
        "run",
        f"{DEMO}:graph",
        inputs,
        out,
        "--format",
        out_format,
        "--max-lines-per-file",
        64,
        "--batch-size",
        50,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("done: 200 items (200 ok, 0 failed), 4 files"), proc.stdout
    assert "Traceback" not in proc.stderr
    shards = sorted(p.name for p in out.iterdir() if p.is_file())
    suffix = "." + out_format
    assert shards == [f"00{k}{suffix}" for k in range(4)] + ["_manifest.json", "_writer.lock"]
    meta = manifest(out)
    assert meta["finished"] is True
    assert meta["format"] == out_format
    assert meta["graph"] == "huge_batch_demo"
    assert [s["rows"] for s in meta["shards"]] == [64, 64, 64, 8]
    assert meta["n_rows"] == 200
    reader = read_parquet(out) if out_format == "parquet" else read_jsonl(out)
    rows = list(reader)
    assert [r["_index"] for r in rows] == list(range(200))
    assert list(rows[0]) == ["_index", "text", "stars", *DEMO_OUTPUTS]
    source = list(read_jsonl(SAMPLE))
    assert [r["text"] for r in rows] == [r["text"] for r in source]
    assert {r["label"] for r in rows} <= {"positive", "neutral", "negative"}


def test_run_csv_converts_annotated_columns(cli, work: Path) -> None:
    (work / "in.csv").write_text("x,w\n1,2.5\n2,3\n")
    proc = cli("run", "pipe.py:graph", "in.csv", "out", "--format", "parquet", cwd=work)
    assert proc.returncode == 0, proc.stderr
    rows = list(read_parquet(work / "out"))
    assert rows == [
        {"_index": 0, "x": 1, "w": 2.5, "y": 2, "z": 5.0},
        {"_index": 1, "x": 2, "w": 3.0, "y": 3, "z": 9.0},
    ]


def test_map_over_and_set_constants(cli, work: Path) -> None:
    proc = cli(
        "run",
        "pipe.py:graph",
        "numbers.jsonl",
        "out",
        "--map-over",
        "x",
        "--set",
        "w=10",
        "--set",
        "k=5",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(read_jsonl(work / "out"))
    assert len(rows) == 200
    assert rows[3] == {"_index": 3, "x": 3, "y": 8, "z": 80}  # w is a constant, not a column


@pytest.mark.parametrize("in_format", ["jsonl", "parquet"])
def test_map_over_brings_the_other_columns_the_graph_reads(cli, work: Path, in_format: str) -> None:
    """``--map-over x``: the columns ``w`` (needed) and ``k`` (optional) come along, zipped
    row by row with ``x``; ``note``, which no node reads, is left out; ``--set`` pins one."""
    records = [{"note": f"n{i}", "x": i, "w": i / 2, "k": 10 * i} for i in range(5)]
    if in_format == "parquet":
        pq.write_table(pa.Table.from_pylist(records), work / "rows.parquet")
    else:
        lines = "".join(json.dumps(r) + "\n" for r in records)
        (work / "rows.jsonl").write_text(lines)
    source = f"rows.{in_format}"
    proc = cli("run", "pipe.py:graph", source, "out", "--map-over", "x", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert list(read_jsonl(work / "out")) == [
        {"_index": i, "x": i, "w": i / 2, "k": 10 * i, "y": 11 * i, "z": 11 * i * i / 2}
        for i in range(5)
    ]
    args = ("run", "pipe.py:graph", source, "pinned", "--map-over", "x", "--set", "k=1", "-q")
    proc = cli(*args, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert [r["y"] for r in read_jsonl(work / "pinned")] == [1, 2, 3, 4, 5]


def test_quiet_prints_nothing(work: Path) -> None:
    """A real process: nothing at all reaches its stdout and stderr file descriptors."""
    proc = subprocess_cli("run", "pipe.py:graph", "numbers.jsonl", "out", "--quiet", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")
    assert manifest(work / "out")["n_rows"] == 200


def test_async_runner(cli, work: Path) -> None:
    proc = cli("run", "pipe.py:graph", "numbers.jsonl", "out", "--runner", "async", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert indices(work / "out", "jsonl") == list(range(200))


@pytest.mark.slow
def test_dask_runner_on_a_local_cluster_and_on_a_scheduler(work: Path) -> None:
    """A real process each: ``--runner dask`` starts a local cluster; ``--scheduler`` uses
    a running one. FILE.py is loaded by path, so its functions travel by value."""
    distributed = pytest.importorskip("distributed")
    proc = subprocess_cli("run", "pipe.py:graph", "numbers.jsonl", "out", "--runner", "dask",
                          "-q", cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert indices(work / "out", "jsonl") == list(range(200))
    expected = list(read_jsonl(work / "out"))
    with distributed.LocalCluster(
        n_workers=1, processes=True, dashboard_address=":0", silence_logs=50
    ) as cluster:
        proc = subprocess_cli("run", "pipe.py:graph", "numbers.jsonl", "out2", "--runner",
                              "dask", "--scheduler", cluster.scheduler_address, "-q",
                              cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert list(read_jsonl(work / "out2")) == expected


def test_scheduler_without_the_dask_runner_is_a_usage_error(cli, work: Path) -> None:
    proc = cli("run", "pipe.py:graph", "numbers.jsonl", "out", "--scheduler", "tcp://x:1",
               cwd=work)  # fmt: skip
    assert proc.returncode == 2
    assert "--scheduler is for --runner dask" in error_line(proc)


def test_cache_dir_is_used(cli, work: Path) -> None:
    for out in ("a", "b"):
        proc = cli("run", "pipe.py:graph", "numbers.jsonl", out, "--cache", "cache", cwd=work)
        assert proc.returncode == 0, proc.stderr
    assert (work / "cache").is_dir()
    assert list(read_jsonl(work / "a")) == list(read_jsonl(work / "b"))


def test_an_earlier_output_reads_back_as_input(cli, work: Path) -> None:
    """Its ``_index`` column is skipped; its other columns must still be graph inputs."""
    first = cli("run", "pipe.py:other", "numbers.jsonl", "a", "--map-over", "x", "-q", cwd=work)
    assert first.returncode == 0, first.stderr
    refused = cli("run", "pipe.py:other", "a", "b", cwd=work)  # column 'y' is not an input
    assert refused.returncode == 2
    assert "columns the graph does not read: 'y'" in error_line(refused)
    again = cli("run", "pipe.py:other", "a", "b", "--map-over", "x", "--set", "k=10", cwd=work)
    assert again.returncode == 0, again.stderr
    assert [r["y"] for r in read_jsonl(work / "b")] == [x + 10 for x in range(200)]


# --------------------------------------------------------------------------- failures
def test_node_failure_raises_one_line_exit_1(work: Path) -> None:
    """A real process: a failed node is exit status 1 of ``python -m hypernodes_chain``."""
    proc = subprocess_cli(
        "run", "pipe.py:graph", "numbers.jsonl", "out", env={"HNC_TEST_FAIL_AT": "7"}, cwd=work
    )
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("hypernodes-chain: error: node 'inc' for item 7 failed with ValueError")
    assert "--resume" in line


def test_on_error_collect_writes_errors_shard(cli, work: Path) -> None:
    proc = cli(
        "run",
        "pipe.py:graph",
        "numbers.jsonl",
        "out",
        "--on-error",
        "collect",
        env={"HNC_TEST_FAIL_AT": "7"},
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(199 ok, 1 failed)" in proc.stdout
    errors = list(read_jsonl(work / "out" / "_errors"))
    assert [(e["_index"], e["node"], e["error_type"]) for e in errors] == [(7, "inc", "ValueError")]
    assert 7 not in indices(work / "out", "jsonl")


def test_resume_continues_after_a_failure(cli, work: Path) -> None:
    args = ("run", "pipe.py:graph", "numbers.jsonl", "out", "--batch-size", 50)
    args += ("--max-lines-per-file", 50, "--format", "parquet")
    first = cli(*args, env={"HNC_TEST_FAIL_AT": "170"}, cwd=work)
    assert first.returncode == 1
    assert manifest(work / "out")["n_rows"] == 150  # three whole batches were committed
    again = cli(*args, cwd=work)  # no --resume: refused, nothing touched
    assert again.returncode == 2
    assert "--resume" in error_line(again)
    resumed = cli(*args[:-2], "--resume", cwd=work)  # the format comes from the folder
    assert resumed.returncode == 0, resumed.stderr
    assert "done: 50 items (50 ok, 0 failed; 150 already done; folder: 200 ok, 0 failed)" in (
        resumed.stdout
    )
    assert indices(work / "out", "parquet") == list(range(200))
    meta = manifest(work / "out")
    assert meta["finished"] is True
    assert meta["format"] == "parquet"


def test_json_logs_are_json_lines(cli, work: Path) -> None:
    proc = cli(
        "run",
        "pipe.py:graph",
        "numbers.jsonl",
        "out",
        "--json-logs",
        "--batch-size",
        64,
        "--on-error",
        "collect",
        env={"HNC_TEST_FAIL_AT": "3"},
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "MapStarted"
    assert kinds[-1] == "MapFinished"
    assert kinds.count("BatchFinished") == 4
    assert "NodeFailed" in kinds
    assert events[0]["total"] == 200
    summary = json.loads(proc.stdout)
    assert (summary["items"], summary["ok"], summary["failed"]) == (200, 199, 1)
    assert summary["files"] == [str(Path("out") / "000.jsonl")]


def test_json_logs_error_is_json(cli, work: Path) -> None:
    proc = cli("run", "pipe.py:nope", "numbers.jsonl", "out", "--json-logs", cwd=work)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # JSON logs: nothing but JSON
    record = json.loads(lines[0])
    assert record["event"] == "Error"
    assert record["exit_code"] == 2
    assert "no graph 'nope'" in record["message"]


# --------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("run", "missing.py:graph", "numbers.jsonl", "out"), "no such file: 'missing.py'"),
        (
            ("run", "pipe.py:grph", "numbers.jsonl", "out"),
            "no graph 'grph' in 'pipe.py'; graphs in 'pipe.py': graph, other",
        ),
        (
            ("run", "pipe.py:not_a_graph", "numbers.jsonl", "out"),
            "'not_a_graph' in 'pipe.py' is a int, not a Graph",
        ),
        (("run", "pipe.py", "numbers.jsonl", "out"), "bad graph spec 'pipe.py': no graph name"),
        (("run", "pipe.txt:graph", "numbers.jsonl", "out"), "is not a .py file"),
        (("run", "pipe.py:", "numbers.jsonl", "out"), "no graph name after ':'"),
        (("run", "pipe.py:1graph", "numbers.jsonl", "out"), "is not a Python name"),
        (("inspect", "pipe.py:grph"), "graphs in 'pipe.py': graph, other"),
        (("run", "pipe.py:graph", "missing.jsonl", "out"), "no such file or folder"),
        (
            ("run", "pipe.py:graph", "extra.jsonl", "out"),
            "'extra.jsonl' has columns the graph does not read: 'extra', 'colour'",
        ),
        (
            ("run", "pipe.py:graph", "xs.jsonl", "out", "--map-over", "x"),
            "needs inputs 'w', which are neither columns of 'xs.jsonl' nor given with --set",
        ),
        (
            ("run", "pipe.py:graph", "numbers.jsonl", "out", "--map-over", "x,q"),
            "--map-over names 'q' that the graph does not read",
        ),
        (
            ("run", "pipe.py:graph", "numbers.jsonl", "out", "--set", "w=1"),
            "'w' is both a column of 'numbers.jsonl' and set with --set",
        ),
        (("run", "pipe.py:graph", "holes.jsonl", "out"), "record 2 of 'holes.jsonl' has no field"),
    ],
)
def test_usage_errors_are_one_line_exit_2(cli, work: Path, args: tuple[str, ...], expected: str):
    (work / "extra.jsonl").write_text('{"x": 1, "w": 2, "extra": 3, "colour": "red"}\n')
    (work / "holes.jsonl").write_text('{"x": 1, "w": 2}\n{"x": 2, "w": 2}\n{"x": 3}\n')
    (work / "xs.jsonl").write_text('{"x": 1}\n')
    proc = cli(*args, cwd=work)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = error_line(proc)
    assert line.startswith("hypernodes-chain: error: ")
    assert expected in line
    assert not (work / "out" / "000.jsonl").exists()


def test_broken_graph_file_is_one_line(work: Path) -> None:
    """A real process: a graph file that fails to import is exit status 2, one line."""
    (work / "broken.py").write_text("import does_not_exist_anywhere\n")
    proc = subprocess_cli("inspect", "broken.py:graph", cwd=work)
    assert proc.returncode == 2
    assert "importing 'broken.py' failed: ModuleNotFoundError" in error_line(proc)


def test_verbose_shows_the_traceback(cli, work: Path) -> None:
    proc = cli("run", "pipe.py:grph", "numbers.jsonl", "out", "--verbose", cwd=work)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hypernodes-chain: error: no graph")
    failed = cli(
        "run", "pipe.py:graph", "numbers.jsonl", "o2", "-v", env={"HNC_TEST_FAIL_AT": "4"}, cwd=work
    )
    assert failed.returncode == 1
    assert "ValueError: item 4 is bad" in failed.stderr
    assert "Traceback" in failed.stderr


def test_argparse_errors_exit_2(work: Path) -> None:
    """A real process: argparse's own errors are exit status 2."""
    proc = subprocess_cli(
        "run", "pipe.py:graph", "numbers.jsonl", "out", "--batch-size", "0", cwd=work
    )
    assert proc.returncode == 2
    assert "must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- inspect
def test_inspect_prints_tree_inputs_outputs(cli, work: Path) -> None:
    proc = cli("inspect", "pipe.py:graph", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == textwrap.dedent(
        """\
        pipe
        ├── inputs: x, w  optional: k
        ├── inc(x, k) → y
        └── mul(y, w) → z
        inputs: x, w
        optional inputs: k
        outputs: y, z
        """
    )
    assert proc.stderr == ""
    assert sorted(p.name for p in work.iterdir() if p.name != "__pycache__") == [
        "numbers.jsonl",
        "pipe.py",
    ]


def test_inspect_demo_graph(cli) -> None:
    proc = cli("inspect", "runners/huge_batch_demo.py:graph", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "score(features, stars) → score" in proc.stdout
    assert "outputs: cleaned, features, score, label" in proc.stdout


def test_version() -> None:
    """A real process: ``python -m hypernodes_chain --version``."""
    proc = subprocess_cli("--version", cwd=ROOT)
    assert proc.returncode == 0
    assert proc.stdout.startswith("hypernodes-chain ")


# --------------------------------------------------------------------------- input splitting
def test_jsonl_records_are_read_once_and_split_in_lockstep(tmp_path: Path) -> None:
    """Several columns of a jsonl input: one pass over the records, a bounded read-ahead."""
    from hypernodes_chain import Graph, Runner, node
    from hypernodes_chain.cli import map_inputs

    path = tmp_path / "in.jsonl"
    with open(path, "w") as f:
        for i in range(5_000):
            f.write(json.dumps({"x": i, "w": i % 7, "k": 2}) + "\n")
    passes = []

    class Counting(type(read_jsonl(path))):  # a JsonlReader that counts its passes
        def __iter__(self):
            passes.append(1)
            return super().__iter__()

    reader = Counting(path)
    inputs = map_inputs("jsonl", reader, ["x", "w", "k"], batch_size=100)
    assert len(inputs["x"]) == 5_000  # the length comes from the reader, for progress bars

    @node(output_name="y")
    def f(x: int, w: int, k: int) -> int:
        return x * k + w

    rows = Runner().map(Graph([f]), inputs, map_over=["x", "w", "k"], batch_size=100)
    assert [r["y"] for r in rows] == [i * 2 + i % 7 for i in range(5_000)]
    assert len(passes) == 1
    stream = inputs["x"]._stream
    assert stream.peak <= 100 + 256  # one batch plus one read chunk, not the whole file


def test_help_explains_every_option_and_the_exit_status(cli, tmp_path: Path) -> None:
    from hypernodes_chain.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    silent = [a.option_strings for a in run._actions if a.option_strings and not a.help]
    assert silent == [], f"options without help: {silent}"
    assert "exit status: 0 done (also when --on-error collect" in run.format_help()


DATAFLOW = '''
"""A Hamilton dataflow: plain functions, no Graph."""
from hamilton.function_modifiers import config


def spend_eur(raw_spend: float, rate: float = 0.5) -> float:
    return raw_spend * rate


@config.when(region="eu")
def tax__eu(spend_eur: float) -> float:
    return spend_eur * 0.2


@config.when(region="us")
def tax__us(spend_eur: float) -> float:
    return spend_eur * 0.1


def total(spend_eur: float, tax: float) -> float:
    return spend_eur + tax
'''


def test_a_hamilton_dataflow_runs_with_config_and_outputs(cli, work: Path) -> None:
    pytest.importorskip("hamilton")
    (work / "flow.py").write_text(DATAFLOW)
    with open(work / "spend.jsonl", "w") as f:
        for s in range(50):
            f.write(json.dumps({"raw_spend": float(s)}) + "\n")
    inspect = cli("inspect", "flow.py", "--config", "region=eu", cwd=work)
    assert inspect.returncode == 0, inspect.stderr
    assert "tax(spend_eur) → tax" in inspect.stdout and "optional inputs: rate" in inspect.stdout
    proc = cli("run", "flow.py", "spend.jsonl", "out", "--config", "region=eu",
               "--outputs", "total", "-q", cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(read_jsonl(work / "out"))
    assert rows[10] == {"_index": 10, "raw_spend": 10.0, "total": 10.0 * 0.5 * 1.2}
    wrong = cli("run", "flow.py", "spend.jsonl", "out2", "--outputs", "nope", cwd=work)
    assert wrong.returncode == 2 and "unknown output 'nope'" in error_line(wrong)
    graph_file = cli("run", "pipe.py:graph", "numbers.jsonl", "out3", "--config", "a=1", cwd=work)
    assert graph_file.returncode == 2 and "--config is for Hamilton" in error_line(graph_file)
