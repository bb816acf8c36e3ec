"""OllamaEngine through the official ``ollama`` client against a loopback server that speaks
the Ollama HTTP API (tests/support/ollama_server.py) backed by the real tiny Llama."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

pytest.importorskip("ollama")
pytest.importorskip("tenacity")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")
pydantic = pytest.importorskip("pydantic")

from hypernodes_chain import AsyncRunner, Graph, Runner  # noqa: E402
from hypernodes_chain.engines.base import Engine, Reply  # noqa: E402
from hypernodes_chain.engines.ollama import OllamaEngine, OllamaError  # noqa: E402
from hypernodes_chain.llm import llm_node  # noqa: E402
from support.engine_load import RUNNER_KINDS, both_at_once, closed_port, two_nodes_map  # noqa: E402

SERVER = Path(__file__).resolve().parents[1] / "support" / "ollama_server.py"
NAME = "tiny"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 8},
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
    },
    "required": ["title", "sentiment"],
}


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[str]) -> None:
        self.port = port
        self.proc = proc
        self.host = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.host}{path}", timeout=10) as reply:
            return json.loads(reply.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/debug/stats")
        return result

    def reset(self) -> None:
        self.get("/debug/reset")


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--model-dir", str(tiny_llama),
         "--name", NAME],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the server did not start (exit {proc.poll()})"
        yield Server(int(line), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def srv(server: Server) -> Server:
    server.reset()
    return server


def engine_of(server: Server, **kwargs: Any) -> OllamaEngine:
    return OllamaEngine(NAME, host=server.host, **kwargs)


def test_is_an_engine(srv: Server) -> None:
    assert isinstance(engine_of(srv), Engine)


def test_generate_str_prompts_and_chat_messages(srv: Server) -> None:
    engine = engine_of(srv)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    replies = engine.generate(["the water", chat, "hello world"], max_tokens=8, temperature=0)
    assert all(isinstance(r, str) for r in replies), replies
    stats = srv.stats()
    assert stats["requests"]["/api/generate"] == 2 and stats["requests"]["/api/chat"] == 1
    assert {"model", "prompt", "stream", "options", "keep_alive"} <= set(
        stats["fields"]["/api/generate"]
    )
    assert {"model", "messages", "stream"} <= set(stats["fields"]["/api/chat"])
    assert all(o["num_predict"] == 8 and o["temperature"] == 0 for o in stats["options"])
    assert set(stats["keep_alive"]) == {"5m"}
    # greedy decoding on the server: the same prompt gives the same reply
    again = engine.generate(["the water"], max_tokens=8, temperature=0)
    assert again == replies[:1]
    # a bad prompt fails its entry only
    mixed = engine.generate(["a", 42], max_tokens=4)  # type: ignore[list-item]
    assert isinstance(mixed[0], str) and isinstance(mixed[1], TypeError)


def test_schema_goes_as_format_and_replies_are_valid(srv: Server) -> None:
    engine = engine_of(srv)
    replies = engine.generate(["review: good", [{"role": "user", "content": "bad"}]],
                              schema=SCHEMA, max_tokens=64)  # fmt: skip
    for reply in replies:
        assert isinstance(reply, str), reply
        value = json.loads(reply)
        assert value["sentiment"] in {"positive", "negative", "neutral"}
        assert len(value["title"]) <= 8
    assert srv.stats()["formats"] == [SCHEMA, SCHEMA]


def test_concurrency_reaches_but_never_exceeds_max_concurrency(srv: Server) -> None:
    srv.get("/debug/delay?s=0.05")
    engine = engine_of(srv, max_concurrency=3)
    replies = engine.generate([f"prompt {i}" for i in range(10)], max_tokens=2)
    assert all(isinstance(r, str) for r in replies)
    peak = srv.stats()["peak"]
    assert 1 < peak <= 3
    srv.reset()
    srv.get("/debug/delay?s=0.05")
    replies = asyncio.run(engine.agenerate([f"p {i}" for i in range(10)], max_tokens=2))
    assert all(isinstance(r, str) for r in replies)
    assert 1 < srv.stats()["peak"] <= 3


def test_two_threads_calling_generate_share_one_limit(srv: Server) -> None:
    srv.get("/debug/delay?s=0.05")
    engine = engine_of(srv, max_concurrency=3)
    try:
        replies = both_at_once(
            lambda: engine.generate([f"one {i}" for i in range(6)], max_tokens=2),
            lambda: engine.generate([f"two {i}" for i in range(6)], max_tokens=2),
        )
    finally:
        engine.stop()
    assert all(isinstance(r, str) for batch in replies for r in batch), replies
    stats = srv.stats()
    assert stats["requests"]["/api/generate"] == 12 + 1  # and the unload
    assert 1 < stats["peak"] <= 3


def test_two_event_loops_calling_agenerate_share_one_limit(srv: Server) -> None:
    srv.get("/debug/delay?s=0.05")
    engine = engine_of(srv, max_concurrency=3)

    def in_a_loop_of_its_own(tag: str) -> list[str | Exception]:
        return asyncio.run(engine.agenerate([f"{tag} {i}" for i in range(6)], max_tokens=2))

    try:
        replies = both_at_once(lambda: in_a_loop_of_its_own("one"),
                               lambda: in_a_loop_of_its_own("two"))  # fmt: skip
    finally:
        engine.stop()
    assert all(isinstance(r, str) for batch in replies for r in batch), replies
    stats = srv.stats()
    assert stats["requests"]["/api/generate"] == 12 + 1
    assert 1 < stats["peak"] <= 3


@pytest.mark.parametrize("runner_kind", RUNNER_KINDS)
def test_two_llm_nodes_on_one_engine_share_one_limit(srv: Server, runner_kind: str) -> None:
    srv.get("/debug/delay?s=0.03")
    engine = engine_of(srv, max_concurrency=3)
    out = two_nodes_map(engine, runner_kind, [f"review {i}" for i in range(16)])
    assert all(isinstance(row["first"], str) and isinstance(row["second"], str) for row in out)
    stats = srv.stats()
    assert stats["requests"]["/api/generate"] == 2 * 16 + 2  # and the load and the unload
    assert 1 < stats["peak"] <= 3


def test_connections_are_reused(srv: Server) -> None:
    engine = engine_of(srv, max_concurrency=3)
    try:
        for k in range(4):
            replies = engine.generate([f"call {k} prompt {i}" for i in range(5)], max_tokens=2)
            assert all(isinstance(r, str) for r in replies), replies
        assert "".join(engine.stream("the water", max_tokens=4))
        # the stats request itself comes on a connection of its own
        assert srv.stats()["connections"] - 1 <= 3
        srv.reset()

        async def calls() -> None:
            for k in range(4):
                replies = await engine.agenerate([f"a {k} {i}" for i in range(5)], max_tokens=2)
                assert all(isinstance(r, str) for r in replies), replies
            assert [c async for c in engine.astream("the water", max_tokens=4)]

        asyncio.run(calls())
        assert srv.stats()["connections"] - 1 <= 3
    finally:
        engine.stop()


def test_replies_carry_the_servers_token_counts(srv: Server) -> None:
    engine = engine_of(srv)
    [reply] = engine.generate(["the water is warm"], max_tokens=6)
    assert isinstance(reply, Reply), reply
    assert reply.prompt_tokens is not None and reply.prompt_tokens > 0
    assert reply.completion_tokens is not None and 0 < reply.completion_tokens <= 6


def test_pickles_as_its_configuration(srv: Server) -> None:
    import pickle

    engine = engine_of(srv, max_concurrency=2, keep_alive="7m")
    first = engine.generate(["a"], max_tokens=2)  # a live client, a pool, locks: none travel
    copy = pickle.loads(pickle.dumps(engine))
    assert (copy.host, copy.max_concurrency, copy.keep_alive) == (srv.host, 2, "7m")
    assert copy.generate(["a"], max_tokens=2) == first
    copy.stop()
    engine.stop()


def test_agenerate_equals_generate(srv: Server) -> None:
    engine = engine_of(srv)
    prompts: list[Any] = ["the water", [{"role": "user", "content": "hello"}]]
    sync = engine.generate(prompts, max_tokens=6)
    assert asyncio.run(engine.agenerate(prompts, max_tokens=6)) == sync


def test_stream_and_astream(srv: Server) -> None:
    engine = engine_of(srv)
    whole = engine.generate(["the water"], max_tokens=12)[0]
    chunks = list(engine.stream("the water", max_tokens=12))
    assert len(chunks) > 1 and "".join(chunks) == whole

    async def collect() -> list[str]:
        return [c async for c in engine.astream([{"role": "user", "content": "hi"}],
                                                max_tokens=12)]  # fmt: skip

    achunks = asyncio.run(collect())
    chat = engine.generate([[{"role": "user", "content": "hi"}]], max_tokens=12)[0]
    assert "".join(achunks) == chat
    streamed = "".join(engine.stream("review", schema=SCHEMA, max_tokens=64))
    assert json.loads(streamed)["sentiment"] in {"positive", "negative", "neutral"}


def test_start_loads_and_stop_unloads(srv: Server) -> None:
    engine = engine_of(srv, keep_alive="10m")
    engine.stop()  # never started: nothing to unload
    assert srv.stats()["requests"].get("/api/generate", 0) == 0
    engine.start()
    stats = srv.stats()
    assert stats["loaded"] and stats["keep_alive"] == ["10m"]
    engine.stop()
    stats = srv.stats()
    assert not stats["loaded"] and stats["unloads"] == 1 and stats["keep_alive"] == ["10m", 0]
    engine.stop()  # idempotent
    assert srv.stats()["unloads"] == 1
    assert isinstance(engine.generate(["a"], max_tokens=2)[0], str)  # works again: loads
    assert srv.stats()["loads"] == 1 + stats["loads"]


def test_unknown_model_names_model_and_host(srv: Server) -> None:
    engine = OllamaEngine("nope", host=srv.host)
    with pytest.raises(OllamaError, match=rf"'nope' not found at {srv.host}"):
        engine.start()
    [entry] = engine.generate(["a"])
    assert isinstance(entry, OllamaError) and "nope" in str(entry) and srv.host in str(entry)
    with pytest.raises(OllamaError, match="nope"):
        engine.identity()


def test_a_server_that_is_down_fails_fast(srv: Server) -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    engine = OllamaEngine(NAME, host=host)  # retries=3: refused at once, backed off
    began = time.monotonic()
    with pytest.raises(OllamaError, match=rf"cannot connect .*{host}"):
        engine.start()
    [entry] = engine.generate(["a"])
    assert isinstance(entry, OllamaError) and host in str(entry) and NAME in str(entry)
    assert time.monotonic() - began < 8
    engine.stop()  # nothing was loaded: no error


def test_transient_failures_are_retried(srv: Server) -> None:
    srv.get("/debug/fail?n=2&status=503")
    engine = engine_of(srv, retries=3)
    assert isinstance(engine.generate(["a"], max_tokens=2)[0], str)
    assert srv.stats()["failed"] == 2 and srv.stats()["requests"]["/api/generate"] == 3
    srv.get("/debug/fail?n=2&status=429")
    assert isinstance(asyncio.run(engine.agenerate(["a"], max_tokens=2))[0], str)
    srv.get("/debug/fail?n=3&status=500")
    [entry] = engine_of(srv, retries=2).generate(["a"], max_tokens=2)
    assert isinstance(entry, OllamaError), entry
    message = str(entry)
    assert "ollama" in message and repr(NAME) in message and srv.host in message
    assert "503" not in message and "500" in message
    srv.get("/debug/fail?n=0")
    srv.get("/debug/fail?n=1&status=400")  # not transient: no retry
    [entry] = engine.generate(["a"], max_tokens=2)
    assert isinstance(entry, OllamaError)
    srv.get("/debug/fail?n=0")


def test_identity_has_the_digest(srv: Server, tiny_llama: Path) -> None:
    identity = engine_of(srv).identity()
    assert identity["engine"] == "ollama" and identity["model"] == NAME
    assert identity["host"] == srv.host
    assert identity["digest"] == srv.get("/api/tags")["models"][0]["digest"]
    assert OllamaEngine(f"{NAME}:latest", host=srv.host).identity()["digest"] == identity["digest"]


def test_host_defaults_and_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert OllamaEngine("m").host == "http://127.0.0.1:11434"
    assert OllamaEngine("m", host="127.0.0.1:99").host == "http://127.0.0.1:99"
    monkeypatch.setenv("OLLAMA_HOST", "example.com")
    assert OllamaEngine("m").host == "http://example.com:11434"
    with pytest.raises(ValueError):
        OllamaEngine("m", max_concurrency=0)


class Summary(pydantic.BaseModel):
    title: str = pydantic.Field(max_length=8)
    sentiment: Literal["positive", "negative", "neutral"]


def test_llm_node_map_through_runner(srv: Server) -> None:
    @llm_node(engine="o", output_name="summary", output_model=Summary, max_tokens=64)
    def summarize(review: str) -> str:
        return f"Summarize as JSON: {review}"

    reviews = [f"review {i}: food was {w}" for i, w in enumerate(["good", "bad", "ok"] * 2)]
    runner = Runner(engines={"o": engine_of(srv, max_concurrency=4)})
    out = runner.map(Graph([summarize]), {"review": reviews}, map_over="review")
    assert len(out) == len(reviews)
    assert all(isinstance(row["summary"], Summary) for row in out)
    stats = srv.stats()
    assert stats["loads"] <= 1 and stats["formats"] and stats["formats"][0]["type"] == "object"
    srv.reset()
    srv.get("/debug/delay?s=0.02")
    arunner = AsyncRunner(engines={"o": engine_of(srv, max_concurrency=4)})
    aout = asyncio.run(arunner.map(Graph([summarize]), {"review": reviews}, map_over="review"))
    assert aout == out  # greedy on the server: the same replies
    assert 1 < srv.stats()["peak"] <= 4


def test_importing_the_engine_imports_no_client() -> None:
    code = (
        "import sys, hypernodes_chain.engines, hypernodes_chain.engines.ollama\n"
        "print(sorted(m for m in ('ollama', 'tenacity', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.ollama
def test_a_real_ollama_server(tmp_path: Path) -> None:
    """Against a real ``ollama`` on PATH (skips without one, or without a pulled model)."""
    binary = shutil.which("ollama")
    if binary is None:
        pytest.skip("no ollama on PATH")
    port = closed_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        host = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{host}/api/tags", timeout=2) as reply:
                    models = json.loads(reply.read())["models"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("ollama serve did not come up")
                time.sleep(0.2)
        if not models:
            pytest.skip("the real ollama has no model pulled")
        engine = OllamaEngine(models[0]["model"], host=host)
        engine.start()
        try:
            [reply] = engine.generate(["Say hi as JSON"], schema=SCHEMA, max_tokens=64)
            assert isinstance(reply, str), reply
            assert json.loads(reply)["sentiment"] in {"positive", "negative", "neutral"}
            assert engine.identity()["digest"] == models[0]["digest"]
        finally:
            engine.stop()
    finally:
        proc.terminate()
        proc.wait(10)
