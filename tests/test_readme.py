"""The README's code runs as written, and says what it gives.

The opening bash blocks are the commands CI runs. Every ```python block runs here: after the
tour block (which defines ``graph``, ``clean``, ``Runner``, ...), in a fresh working folder,
with the data the prose leaves to the reader (``texts``, ``huge_generator()``, a ``docs/``
folder, ``my_dataflow``, ...). Where a line states its result in a comment
(``# {"n_words": 2}``, ``# ...: "a"``), the value is compared. Two blocks name things that
only exist on the reader's machine; the test swaps them, and says so where it does:
``"path/to/hf-model"`` becomes the tiny random Llama (`build_tiny_model`), and the Dask
block's ``/shared/cache`` a temporary folder (its ``tcp://scheduler:8786`` runner is built
but never used, so nothing connects). The Dask and Daft blocks start worker processes and
are marked slow. The command-line block runs through `hypernodes_chain.cli.main`.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import io
import json
import re
import shlex
import sys
import tokenize
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# one marker per python block: the test that runs it
BLOCKS = {
    "tour": "graph = Graph(nodes=[clean, count])",
    "nested": "per_text = Graph(nodes=[count_words]",
    "overrides": 'inputs={"cleaned": "given words"}',
    "bind": "Graph(nodes=[clean, keep_long]",
    "resources": 'resource("vocab")',
    "map": "runner.imap(graph",
    "streaming": 'read_jsonl("docs/")',
    "async": "AsyncRunner(max_concurrency=64)",
    "llm": "@llm_node(",
    "dask": "with DaskRunner() as runner:",
    "hamilton": "from_modules(my_dataflow",
    "daft": "DaftRunner().map(",
    "otel-console": "ConsoleSpanExporter()",
    "otel-otlp": "OTLPSpanExporter(endpoint=",
}


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def block(name: str) -> str:
    [code] = [b for b in python_blocks(README) if BLOCKS[name] in b]
    return code


def _stated(comment: str | None) -> Any:
    """The literal a comment states (all of it, or what follows a ": "), else a sentinel."""
    if comment is None:
        return _NOTHING
    for text in [comment, *(comment[m.end() :] for m in re.finditer(": ", comment))]:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError:
            continue
        if isinstance(tree.body, (ast.Constant, ast.Dict, ast.List, ast.Tuple)):
            return ast.literal_eval(tree.body)
    return _NOTHING


_NOTHING = object()


def _comments(code: str) -> dict[int, str]:
    """The comment ending each line, by line number."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return {t.start[0]: t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT}


class _Values(ast.NodeTransformer):
    """Turns each top-level expression statement into ``__values__[i] = expr`` (the argument
    for a ``print(x)``), so the block's results can be compared with its comments."""

    def __init__(self) -> None:
        self.lines: dict[int, int] = {}  # statement index -> its last line

    def visit_Module(self, module: ast.Module) -> ast.Module:
        body: list[ast.stmt] = []
        for i, stmt in enumerate(module.body):
            if isinstance(stmt, ast.Expr):
                value = stmt.value
                if (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name)
                    and value.func.id == "print"
                    and len(value.args) == 1
                ):
                    body.append(stmt)
                    value = value.args[0]
                target = ast.Subscript(
                    ast.Name("__values__", ast.Load()), ast.Constant(i), ast.Store()
                )
                stmt = ast.Assign([target], value)
                self.lines[i] = module.body[i].end_lineno or 0
            body.append(stmt)
        module.body = body
        return ast.fix_missing_locations(module)


def run_block(code: str, ns: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Run ``code`` in ``ns`` (top-level ``await`` allowed); returns, for each expression
    statement whose comment states a result, (its value, the stated value)."""
    values = _Values()
    tree = values.visit(ast.parse(code))
    # dont_inherit: the block runs as a reader runs it, without this module's __future__ import
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    compiled = compile(tree, "<README>", "exec", flags=flags, dont_inherit=True)
    ns["__values__"] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(compiled, ns)  # a coroutine when the block awaits
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    comments = _comments(code)
    checks = []
    for i, line in values.lines.items():
        stated = _stated(comments.get(line))
        if stated is not _NOTHING:
            checks.append((ns["__values__"][i], stated))
    return checks


def assert_stated(checks: list[tuple[Any, Any]], at_least: int) -> None:
    assert len(checks) >= at_least, "the block states fewer results than it did"
    for value, stated in checks:
        assert value == stated


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ns(here: Path) -> Iterator[dict[str, Any]]:
    """A namespace after the tour block, with what the prose leaves to the reader.

    It is the namespace of a module in ``sys.modules``, as a reader's script is, so that
    the classes the blocks define pickle (cache values) by reference."""
    from hypernodes_chain.io import StreamWriter

    module = types.ModuleType("readme_example")
    sys.modules[module.__name__] = module
    space = module.__dict__
    assert_stated(run_block(block("tour"), space), at_least=3)
    space["StreamWriter"] = StreamWriter  # imported by the README's streaming block
    space["texts"] = [f"Review {i}: {'Great' if i % 3 else 'bad'} Product " for i in range(200)]
    yield space
    del sys.modules[module.__name__]


def _by_value(ns: dict[str, Any]) -> None:
    """Worker processes cannot import the blocks' module: cloudpickle ships it by value."""
    cloudpickle = pytest.importorskip("cloudpickle")
    module = sys.modules[ns["__name__"]]
    cloudpickle.register_pickle_by_value(module)


def _plain(graph: Any, texts: list[str]) -> list[dict[str, Any]]:
    from hypernodes_chain import Runner

    return [Runner().run(graph, inputs={"text": t}) for t in texts]


def _jsonl_rows(folder: str) -> int:
    return sum(len(p.read_text().splitlines()) for p in Path(folder).glob("*.jsonl"))


def _rows(folder: str) -> Any:
    pd = pytest.importorskip("pandas")
    return pd.read_parquet(folder)


# -- the opening commands -------------------------------------------------------------------


def test_ci_runs_exactly_the_readme_test_command():
    blocks = bash_blocks(README)
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


# -- every python block ---------------------------------------------------------------------


def test_every_python_block_is_run_here() -> None:
    for code in python_blocks(README):
        names = [name for name, marker in BLOCKS.items() if marker in code]
        assert len(names) == 1, f"a README block no test here runs:\n{code}"
    assert len(python_blocks(README)) == len(BLOCKS)


def test_tour_nested_graph_and_overrides(ns: dict[str, Any]) -> None:
    assert_stated(run_block(block("nested"), ns), at_least=1)
    assert_stated(run_block(block("overrides"), ns), at_least=1)
    from hypernodes_chain.exceptions import InputConflictError

    # the error the overrides block describes in its comment
    with pytest.raises(InputConflictError) as caught:
        ns["Runner"]().run(ns["graph"], inputs={"cleaned": "x", "text": " y "})
    for name in ("input 'cleaned'", "node 'clean'", "input 'text'"):
        assert name in str(caught.value)


def test_bind_block(ns: dict[str, Any]) -> None:
    assert_stated(run_block(block("bind"), ns), at_least=3)
    from hypernodes_chain.exceptions import InputConflictError

    with pytest.raises(InputConflictError, match="binds 'min_words'"):
        ns["Runner"]().run(ns["filtering"], inputs={"text": "a", "min_words": 1})


def test_resources_block(ns: dict[str, Any]) -> None:
    assert_stated(run_block(block("resources"), ns), at_least=2)


def test_tracing_console_block(ns: dict[str, Any]) -> None:
    """The console exporter binds the process's stdout when opentelemetry is imported; the
    test hands it a buffer instead, to read the spans it prints."""
    pytest.importorskip("opentelemetry.sdk")
    ns["__console__"] = console = io.StringIO()
    code = block("otel-console").replace(
        "ConsoleSpanExporter()", "ConsoleSpanExporter(out=__console__)"
    )
    run_block(code, ns)
    found = re.findall(r"^\{.*?^\}", console.getvalue(), flags=re.S | re.M)
    spans = [json.loads(s) for s in found]
    names = [span["name"] for span in spans]
    # the run: its root and its 2 nodes; the map of 200 texts in batches of 100: the map,
    # 2 batches, 2 x 2 nodes
    assert len(names) == 10, names
    assert names.count("node clean") == names.count("node count") == 3
    assert names.count("batch") == 2


def test_tracing_otlp_block(ns: dict[str, Any]) -> None:
    """The block's collector on localhost:4318 is, here, a loopback OTLP/HTTP receiver that
    decodes the protobuf the exporter sends."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from support.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        code = block("otel-otlp").replace("http://localhost:4318/v1/traces", receiver.endpoint)
        run_block(code, ns)
        spans = receiver.wait_for(5)
    names = sorted(span.name for span in spans)
    assert names == sorted(["nightly reviews", "map graph", "batch", "node clean", "node count"])


def test_map_block(ns: dict[str, Any], here: Path) -> None:
    ns["huge_generator"] = lambda: (f"item {i}" for i in range(3_000))
    run_block(block("map"), ns)
    assert ns["rows"] == _plain(ns["graph"], ns["texts"])  # "list in input order"
    assert (here / ".hypernodes_cache").is_dir()


def test_streaming_block(ns: dict[str, Any], here: Path) -> None:
    (here / "docs").mkdir()
    for shard in range(2):
        lines = [json.dumps({"text": f"Doc-{shard}-{i} Text"}) for i in range(50)]
        (here / "docs" / f"00{shard}.jsonl").write_text("\n".join(lines) + "\n")
    ns["runner"] = ns["Runner"]()  # the map block's runner
    run_block(block("streaming"), ns)
    from hypernodes_chain import MapResult

    result = ns["result"]
    assert isinstance(result, MapResult)
    assert (result.n_ok, result.n_failed) == (100, 0)
    rows = _rows("out/")
    assert sorted(rows["n_words"]) == [2] * 100


def test_async_block(ns: dict[str, Any]) -> None:
    assert_stated(run_block(block("async"), ns), at_least=1)  # print(run.result)


def test_async_block_answers_an_interrupt(ns: dict[str, Any]) -> None:
    """The same block on a graph whose node asks: ``run.respond(True)`` answers it."""
    from hypernodes_chain import Graph, interrupt, node

    @node(output_name="n_words")
    def approve(cleaned: str) -> int:
        return len(cleaned.split()) if interrupt(cleaned, name="approve") else -1

    ns["graph"] = Graph(nodes=[ns["clean"], approve])
    lines = block("async").splitlines()
    code = "\n".join(line for line in lines if not line.startswith("await AsyncRunner("))
    checks = run_block(code, ns)  # that line has no handler for the interrupt
    assert ns["run"].result == {"cleaned": "hi", "n_words": 1}
    assert_stated(checks, at_least=1)


def test_llm_block_every_reply_validates(ns: dict[str, Any], tiny_llama: Path) -> None:
    """The README's `Summary` (an unbounded ``title``) with ``max_tokens=128`` on the tiny
    random model: all 200 items validate (its titles fit the bound the engine gives them)."""
    # the reader's model folder: the tiny random Llama
    code = block("llm").replace('"path/to/hf-model"', repr(str(tiny_llama)))
    run_block(code, ns)
    result = ns["__values__"][max(ns["__values__"])]  # the block's last line: runner.map(...)
    try:
        assert (result.n_ok, result.n_failed) == (200, 0), result
        rows = _rows("out/")
        assert len(rows) == 200
        assert set(rows["summary.sentiment"]) <= {"positive", "negative", "neutral"}
    finally:
        ns["runner"].engines["small"].stop()


def test_hamilton_block(ns: dict[str, Any]) -> None:
    pytest.importorskip("hamilton")
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from resources import hamilton_basic
    finally:
        sys.path.remove(str(ROOT / "tests"))
    data = [(100.0, 4), (50.0, 0), (12.5, 3)]
    ns.update(my_dataflow=hamilton_basic, data=data)
    ns.update(spends=[s for s, _ in data], signups=[n for _, n in data])
    run_block(block("hamilton"), ns)
    # "the results equal driver.execute for the same modules, config and inputs"
    assert _rows("out/")["report"].tolist() == [r["report"] for r in ns["rows"]]


@pytest.mark.slow
def test_dask_block(ns: dict[str, Any], here: Path) -> None:
    pytest.importorskip("distributed")
    # the reader's shared cache folder: a temporary one (the runner is built, never used)
    code = block("dask").replace('"/shared/cache"', repr(str(here / "shared-cache")))
    _by_value(ns)
    run_block(code, ns)
    assert _jsonl_rows("out/") == len(ns["texts"])


# Daft 0.7.26 never closes the stdout pipe of a UDF process it has torn down (see
# tests/runners/test_daft_runner.py): a ResourceWarning when the handle is collected
DAFT_PIPE = r"unclosed file <_io\.(BufferedReader|FileIO)"


@pytest.mark.slow
@pytest.mark.filterwarnings(f"ignore:{DAFT_PIPE}:ResourceWarning")
def test_daft_block(ns: dict[str, Any], here: Path) -> None:
    daft = pytest.importorskip("daft")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (here / "in").mkdir()
    pq.write_table(pa.table({"text": ns["texts"][:20]}), here / "in" / "part-0.parquet")
    _by_value(ns)
    run_block(block("daft"), ns)
    # the StreamWriter's jsonl shards of 200 items, then the DataFrame's 20 rows beside them
    assert _jsonl_rows("out/") == len(ns["texts"])
    parquet = [pq.read_table(p).num_rows for p in Path("out").glob("*.parquet")]
    assert sum(parquet) == 20
    with warnings.catch_warnings():  # Daft drops its last UDF handles here, under the filter
        warnings.filterwarnings("ignore", DAFT_PIPE, ResourceWarning)
        daft.from_pydict({"x": [1]}).collect()
        gc.collect()


# -- the command line -----------------------------------------------------------------------


def _commands(text: str) -> Iterator[list[str]]:
    """The commands of a bash block, continuation lines joined, comments dropped."""
    for line in text.replace("\\\n", " ").splitlines():
        yield shlex.split(line, comments=True)


def test_cli_block(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hypernodes_chain.cli import main

    (here / "runners").symlink_to(ROOT / "runners")
    [cli] = [b for b in bash_blocks(README) if "hypernodes-chain inspect" in b]
    commands = list(_commands(cli))
    assert all(c[0] == ".venv/bin/hypernodes-chain" for c in commands)
    inspect, run, *resumes = (c[1:] for c in commands)
    assert main(inspect) == 0
    assert main(run) == 0
    assert main(run) == 2  # a second run into the same folder needs --resume
    assert "--resume" in capsys.readouterr().err
    for resume in resumes:  # "run ... --resume": the first run's arguments in place of ...
        at = resume.index("...")
        assert main(resume[:at] + run[1:] + resume[at + 1 :]) == 0
    assert len(_rows("out/reviews")) == 200
