"""The command line's engines: a graph file's ``engines``, ``--engine NAME=SPEC`` over them,
against the real tiny Llama in-process and behind loopback Ollama and OpenAI servers; and
``runners/llm_reviews.py --engine SPEC``.

The runs call ``hypernodes_chain.cli.main(argv)`` in-process (torch is imported once per
session); the usage-error test and the LLM job also run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent
SUPPORT = ROOT / "support"
JOB = ROOT.parent / "runners" / "llm_reviews.py"
NAME = "tiny"  # the model name the loopback servers answer to
TEXTS = ["Water", "The SUN", "good Time"]
MAX_TOKENS = 6
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

PIPE = """
from hypernodes_chain import Graph, node
from hypernodes_chain.engines import EngineBroker, TransformersEngine
from hypernodes_chain.llm import llm_node

TINY = {tiny!r}


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.lower()


@llm_node(engine="local", output_name="reply", max_tokens={max_tokens})
def answer(cleaned: str) -> str:
    return f"the {{cleaned}}"


graph = Graph(nodes=[clean, answer], name="llm_pipe")
nested = Graph(nodes=[clean, Graph([answer], name="inner").as_node()], name="outer")
plain = Graph(nodes=[clean], name="plain")
{engines}
"""

MODULE_ENGINES = {
    "dict": 'engines = {"local": TransformersEngine(TINY)}',
    "factory": 'engines = {"local": lambda: TransformersEngine(TINY)}',
    "broker": 'engines = EngineBroker({"local": TransformersEngine(TINY)}, max_live=1)',
}
BROKEN = 'engines = {"local": TransformersEngine("/no/such/model")}'  # fails if it starts


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``cli(*args, cwd=...)``: ``main(argv)`` in ``cwd``; the graph files it imported are
    dropped from ``sys.modules`` afterwards (the next call imports them again)."""
    from hypernodes_chain.cli import main

    def run(*args: object, cwd: Path) -> Ran:
        before = set(sys.modules)
        with monkeypatch.context() as m:
            m.chdir(cwd)
            m.setenv("COLUMNS", "100")
            m.setattr(sys, "path", list(sys.path))
            capsys.readouterr()
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 2
            out, err = capsys.readouterr()
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if str(Path(file).resolve()).startswith(str(cwd.resolve())):
                del sys.modules[name]
        return Ran(int(code), out, err)

    return run


@pytest.fixture
def work(tmp_path: Path) -> Callable[..., Path]:
    """``work(engines_source, tiny=None)``: a folder with ``llm.py`` (that ``engines`` line at
    its end; ``TINY`` the model folder, a missing one by default) and ``in.jsonl`` (one record
    per text)."""

    def make(engines: str = "", tiny: Path | None = None) -> Path:
        model = str(tiny) if tiny is not None else str(tmp_path / "no-model")
        source = PIPE.format(tiny=model, max_tokens=MAX_TOKENS, engines=engines)
        (tmp_path / "llm.py").write_text(textwrap.dedent(source))
        with open(tmp_path / "in.jsonl", "w") as f:
            for text in TEXTS:
                f.write(json.dumps({"text": text}) + "\n")
        return tmp_path

    return make


@pytest.fixture(scope="module")
def expected(tiny_llama: Path) -> list[str]:
    """The tiny model's greedy replies to the graph's prompts, asked directly."""
    from hypernodes_chain.engines import TransformersEngine

    engine = TransformersEngine(tiny_llama)
    engine.start()
    try:
        replies = engine.generate(
            [f"the {t.lower()}" for t in TEXTS], max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0
        )
    finally:
        engine.stop()
    assert all(isinstance(r, str) for r in replies), replies
    return [str(r) for r in replies]


def replies(out: Path) -> list[str]:
    records = [json.loads(ln) for f in out.glob("*.jsonl") for ln in f.read_text().splitlines()]
    rows = sorted(records, key=lambda r: r["_index"])
    assert [r["text"] for r in rows] == TEXTS
    return [r["reply"] for r in rows]


def error_line(ran: Ran | subprocess.CompletedProcess[str]) -> str:
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    return lines[0]


# --------------------------------------------------------------------------- loopback servers
def _start(argv: list[str], tmp: Path, marker: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a support server; its first stdout line (``marker`` PORT) gives the port."""
    log = tmp / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            env={**os.environ, **ENV},
        )  # fmt: skip
    lines: list[bytes] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    port = lines[0].decode().removeprefix(marker).strip() if lines else ""
    if not port.isdigit():
        proc.kill()
        proc.wait()
        pytest.fail(f"{argv[0]} did not start: {log.read_text()[-2000:]}")
    return proc, int(port)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def ollama_host(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("ollama")
    pytest.importorskip("tenacity")
    argv = [str(SUPPORT / "ollama_server.py"), "--port", "0", "--model-dir", str(tiny_llama),
            "--name", NAME]  # fmt: skip
    proc, port = _start(argv, tmp_path_factory.mktemp("ollama-server"), "")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def ollama(ollama_host: str) -> str:
    get_json(f"{ollama_host}/debug/reset")
    return ollama_host


@pytest.fixture(scope="module")
def openai_url(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("httpx")
    pytest.importorskip("tenacity")
    argv = [str(SUPPORT / "openai_server.py"), "--port", "0", "--model-dir", str(tiny_llama),
            "--name", NAME]  # fmt: skip
    proc, port = _start(argv, tmp_path_factory.mktemp("openai-server"), "PORT ")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


@pytest.fixture
def openai(openai_url: str) -> str:
    get_json(f"{openai_url.removesuffix('/v1')}/debug/reset")
    return openai_url


# --------------------------------------------------------------------------- the file's engines
@pytest.mark.parametrize("runner", ["sync", "async"])
@pytest.mark.parametrize("kind", sorted(MODULE_ENGINES))
def test_the_files_engines_answer(
    cli, work, tiny_llama: Path, expected: list[str], kind: str, runner: str
) -> None:
    folder = work(MODULE_ENGINES[kind], tiny_llama)
    ran = cli("run", "llm.py:graph", "in.jsonl", "out", "--runner", runner, cwd=folder)
    assert ran.returncode == 0, ran.stderr
    assert "done: 3 items (3 ok, 0 failed)" in ran.stdout
    assert replies(folder / "out") == expected


def test_nested_graphs_use_the_files_engines(
    cli, work, tiny_llama: Path, expected: list[str]
) -> None:
    folder = work(MODULE_ENGINES["dict"], tiny_llama)
    ran = cli("run", "llm.py:nested", "in.jsonl", "out", "--quiet", cwd=folder)
    assert ran.returncode == 0, ran.stderr
    assert replies(folder / "out") == expected


@pytest.mark.parametrize("engines", ["", BROKEN, 'engines = EngineBroker({"local": print})'])
def test_engine_flag_overrides_the_files(
    cli, work, tiny_llama: Path, expected: list[str], engines: str
) -> None:
    folder = work(engines)
    flag = f"local=transformers:{tiny_llama}"
    ran = cli("run", "llm.py:graph", "in.jsonl", "out", "--engine", flag, cwd=folder)
    assert ran.returncode == 0, ran.stderr
    assert replies(folder / "out") == expected


# --------------------------------------------------------------------------- over HTTP
@pytest.mark.parametrize("runner", ["sync", "async"])
def test_engine_flag_ollama(cli, work, ollama: str, expected: list[str], runner: str) -> None:
    folder = work(BROKEN)
    flag = f"local=ollama:{NAME}@{ollama}"
    ran = cli("run", "llm.py:graph", "in.jsonl", "out", "--engine", flag, "--runner", runner,
              cwd=folder)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert replies(folder / "out") == expected  # the same model behind the server
    stats = get_json(f"{ollama}/debug/stats")
    # one load request (start), one generate request per item; the CLI's close unloads
    assert stats["requests"]["/api/generate"] == 1 + len(TEXTS) + 1
    assert [o["num_predict"] for o in stats["options"]] == [MAX_TOKENS] * len(TEXTS)
    assert stats["loads"] == 1 and stats["unloads"] == 1 and not stats["loaded"]


@pytest.mark.parametrize("runner", ["sync", "async"])
def test_engine_flag_openai(cli, work, openai: str, runner: str) -> None:
    folder = work(MODULE_ENGINES["factory"])  # replaced before anything starts
    flag = f"local=openai:{openai}@{NAME}"
    ran = cli("run", "llm.py:graph", "in.jsonl", "out", "--engine", flag, "--runner", runner,
              cwd=folder)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert all(isinstance(r, str) for r in replies(folder / "out"))
    stats = get_json(f"{openai.removesuffix('/v1')}/debug/stats")
    assert stats["requests"] == len(TEXTS)
    bodies = stats["bodies"]
    assert {b["model"] for b in bodies} == {NAME}
    assert {b["max_tokens"] for b in bodies} == {MAX_TOKENS}
    prompts = sorted(b["messages"][-1]["content"] for b in bodies)
    assert prompts == sorted(f"the {t.lower()}" for t in TEXTS)


# --------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["local=bogus:x"],
            "--engine 'local=bogus:x': bad engine spec 'bogus:x': unknown engine kind 'bogus'; accepted forms: ollama:NAME[@HOST]",
        ),
        (
            ["local=openai:http://127.0.0.1:1/v1"],
            "--engine 'local=openai:http://127.0.0.1:1/v1': bad engine spec 'openai:http://127.0.0.1:1/v1': no '@MODEL'",
        ),
        (["local=ollama:"], "bad engine spec 'ollama:': no model name"),
        (["local=transformers:"], "bad engine spec 'transformers:': no model folder"),
        (["local"], "--engine 'local': expected NAME=SPEC"),
        (["=ollama:x"], "--engine '=ollama:x': expected NAME=SPEC"),
        (["local="], "--engine 'local=': expected NAME=SPEC"),
        (
            ["other=ollama:x"],
            "--engine 'other=ollama:x': graph 'llm_pipe' uses no engine 'other'; its LLM nodes use 'local'",
        ),
        (
            ["local=ollama:a", "local=ollama:b"],
            "--engine 'local=ollama:b': engine 'local' is given twice",
        ),
    ],
)
def test_bad_engine_flags_exit_2(cli, work, flags: list[str], expected: str) -> None:
    folder = work(BROKEN)
    args = [a for flag in flags for a in ("--engine", flag)]
    ran = cli("run", "llm.py:graph", "in.jsonl", "out", *args, cwd=folder)
    assert ran.returncode == 2
    assert expected in error_line(ran)
    assert not (folder / "out").exists()


@pytest.mark.parametrize(
    ("graph", "engines", "expected"),
    [
        (
            "graph",
            "",
            "graph 'llm_pipe' needs engine 'local' (llm node 'answer'), which 'llm.py' does not define in its 'engines': pass --engine local=SPEC",
        ),
        ("nested", "engines = {}", "graph 'outer' needs engine 'local' (llm node 'answer')"),
        ("graph", "engines = EngineBroker()", "needs engine 'local'"),
        (
            "graph",
            "engines = 3",
            "'engines' in 'llm.py' is a int; it must be an EngineBroker or a dict",
        ),
        (
            "graph",
            'engines = {"local": 3}',
            "'engines' in 'llm.py': engine 'local' must be an engine",
        ),
    ],
)
def test_engines_the_graph_lacks_exit_2(cli, work, graph: str, engines: str, expected: str) -> None:
    folder = work(engines)
    ran = cli("run", f"llm.py:{graph}", "in.jsonl", "out", cwd=folder)
    assert ran.returncode == 2
    assert expected in error_line(ran)


def test_engine_flag_on_a_graph_without_llm_nodes(cli, work) -> None:
    folder = work()
    ran = cli("run", "llm.py:plain", "in.jsonl", "out", "--engine", "x=ollama:y", cwd=folder)
    assert ran.returncode == 2
    assert "graph 'plain' uses no engine 'x'; it has no LLM nodes" in error_line(ran)
    ran = cli("run", "llm.py:plain", "in.jsonl", "out", "--quiet", cwd=folder)
    assert ran.returncode == 0, ran.stderr  # no engine needed, none asked for


def test_bad_spec_in_a_real_process(work) -> None:
    folder = work()
    proc = subprocess.run(
        [sys.executable, "-m", "hypernodes_chain", "run", "llm.py:graph", "in.jsonl", "out",
         "--engine", "local=vllm:"],
        cwd=folder, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("hypernodes-chain: error: --engine 'local=vllm:': bad engine spec")
    assert "no model after 'vllm:'" in line


def test_inspect_lists_the_engines(cli, work) -> None:
    folder = work()
    ran = cli("inspect", "llm.py:nested", cwd=folder)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.endswith("outputs: cleaned, reply\nengines: local\n")
    ran = cli("inspect", "llm.py:plain", cwd=folder)
    assert ran.returncode == 0 and "engines" not in ran.stdout


# --------------------------------------------------------------------------- the LLM job
def test_llm_reviews_job_with_an_ollama_engine(ollama: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(JOB), "--engine", f"ollama:{NAME}@{ollama}", "--rows", "50",
         "--out", str(out), "--quiet"],
        cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"engine: OllamaEngine('{NAME}', host='{ollama}')" in proc.stdout
    assert "random weights" not in proc.stdout  # no tiny model built
    assert "done: 50 reviews (50 ok, 0 failed" in proc.stdout
    assert not (tmp_path / ".llm_reviews_tiny_model").exists()
    table = pq.read_table(out)
    assert table.num_rows == 50 and sorted(table.column("_index").to_pylist()) == list(range(50))
    assert set(table.column("summary.sentiment").to_pylist()) <= {"positive", "negative", "neutral"}
    assert all(1 <= s <= 5 for s in table.column("summary.stars").to_pylist())
    stats = get_json(f"{ollama}/debug/stats")
    assert stats["requests"]["/api/chat"] == 50  # the job's prompts are chat messages
    assert len(stats["formats"]) == 50  # each with the Summary schema as format=


def test_llm_reviews_job_rejects_a_bad_spec(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(JOB), "--engine", "ollama", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--engine: bad engine spec 'ollama': no 'KIND:' prefix" in proc.stderr
    assert not (tmp_path / "out").exists()
