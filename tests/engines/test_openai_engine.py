"""OpenAIEngine against a loopback OpenAI-compatible server (tests/support/openai_server.py,
a subprocess) backed by the real tiny Llama: requests, structured output, concurrency,
retries, errors, streaming, identity and an LLM node map."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("tenacity")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")
pydantic = pytest.importorskip("pydantic")

from hypernodes_chain import Graph, MemoryCache, Runner  # noqa: E402
from hypernodes_chain.engines.base import Engine, Reply  # noqa: E402
from hypernodes_chain.engines.openai_engine import OpenAIEngine, OpenAIEngineError  # noqa: E402
from hypernodes_chain.llm import llm_node  # noqa: E402
from support.engine_load import RUNNER_KINDS, both_at_once, closed_port, two_nodes_map  # noqa: E402

SERVER = Path(__file__).resolve().parents[1] / "support" / "openai_server.py"
NAME = "tiny-llama"
FAST = (0.02, 0.2)  # back-off of the tests: first wait, cap

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 8},
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["title", "sentiment", "count"],
}


class Summary(pydantic.BaseModel):
    title: str = pydantic.Field(max_length=10)
    sentiment: Literal["positive", "negative", "neutral"]


@pytest.fixture(scope="module")
def base_url(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("openai-server") / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", "--model-dir", str(tiny_llama),
             "--name", NAME],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    try:
        if not lines or not lines[0].startswith(b"PORT "):
            proc.kill()
            pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{int(lines[0].split()[1])}/v1"
    finally:
        proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def debug(base_url: str, what: str, **params: Any) -> Any:
    root = base_url.removesuffix("/v1")
    response = httpx.get(f"{root}/debug/{what}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.fixture(autouse=True)
def reset(base_url: str) -> None:
    debug(base_url, "reset")


@pytest.fixture
def engine(base_url: str) -> Iterator[OpenAIEngine]:
    eng = OpenAIEngine(base_url, NAME, max_concurrency=4, backoff=FAST, timeout=30)
    eng.start()
    yield eng
    eng.stop()


def test_is_an_engine(engine: OpenAIEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.max_concurrency == 4


def test_chat_and_str_prompts(engine: OpenAIEngine, base_url: str) -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    replies = engine.generate(["the water", chat], max_tokens=8, seed=3, stop=["zzz"])
    assert all(isinstance(r, str) for r in replies), replies
    bodies = debug(base_url, "stats")["bodies"]
    by_first = {json.dumps(b["messages"][0]): b for b in bodies}
    plain = by_first[json.dumps({"role": "user", "content": "the water"})]
    assert plain["model"] == NAME and plain["max_tokens"] == 8 and plain["seed"] == 3
    assert plain["temperature"] == 0.0 and plain["top_p"] == 1.0 and plain["stop"] == ["zzz"]
    assert by_first[json.dumps(chat[0])]["messages"] == chat
    # the same prompts give the same greedy replies (one request per prompt, in order)
    assert engine.generate(["the water", chat], max_tokens=8, seed=3, stop=["zzz"]) == replies
    again = asyncio.run(engine.agenerate(["the water", chat], max_tokens=8, seed=3, stop="zzz"))
    assert again == replies
    with pytest.raises(TypeError, match="not one str"):
        engine.generate("the water")
    bad = engine.generate([[{"content": "no role"}], "ok"], max_tokens=4)
    assert isinstance(bad[0], TypeError) and isinstance(bad[1], str)


def test_schema_gives_valid_json(engine: OpenAIEngine, base_url: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    prompts = [f"review {i}: the food was good" for i in range(4)]
    replies = engine.generate(prompts, schema=SCHEMA, max_tokens=64)
    for reply in replies:
        assert isinstance(reply, str), reply
        jsonschema.validate(json.loads(reply), SCHEMA)
    fmt = debug(base_url, "stats")["bodies"][0]["response_format"]
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }
    areplies = asyncio.run(engine.agenerate(prompts, schema=SCHEMA, max_tokens=64))
    assert areplies == replies


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_concurrency_is_bounded(engine: OpenAIEngine, base_url: str, mode: str) -> None:
    debug(base_url, "delay", seconds=0.1)
    prompts = [f"prompt {i}" for i in range(12)]
    if mode == "sync":
        replies = engine.generate(prompts, max_tokens=2)
    else:
        replies = asyncio.run(engine.agenerate(prompts, max_tokens=2))
    assert all(isinstance(r, str) for r in replies), replies
    stats = debug(base_url, "stats")
    assert stats["requests"] == 12
    assert 1 < stats["peak"] <= 4


@pytest.mark.parametrize("mode", ["two threads", "two event loops"])
def test_concurrent_calls_share_one_limit(base_url: str, mode: str) -> None:
    debug(base_url, "delay", seconds=0.05)
    eng = OpenAIEngine(base_url, NAME, max_concurrency=3, backoff=FAST)

    def call(tag: str) -> list[str | Exception]:
        prompts = [f"{tag} {i}" for i in range(6)]
        if mode == "two threads":
            return eng.generate(prompts, max_tokens=2)
        return asyncio.run(eng.agenerate(prompts, max_tokens=2))

    try:
        replies = both_at_once(lambda: call("one"), lambda: call("two"))
    finally:
        eng.stop()
    assert all(isinstance(r, str) for batch in replies for r in batch), replies
    stats = debug(base_url, "stats")
    assert stats["requests"] == 12
    assert 1 < stats["peak"] <= 3


@pytest.mark.parametrize("runner_kind", RUNNER_KINDS)
def test_two_llm_nodes_on_one_engine_share_one_limit(base_url: str, runner_kind: str) -> None:
    debug(base_url, "delay", seconds=0.03)
    eng = OpenAIEngine(base_url, NAME, max_concurrency=3, backoff=FAST)
    out = two_nodes_map(eng, runner_kind, [f"review {i}" for i in range(16)])
    assert all(isinstance(row["first"], str) and isinstance(row["second"], str) for row in out)
    stats = debug(base_url, "stats")
    assert stats["requests"] == 2 * 16
    assert 1 < stats["peak"] <= 3


def test_connections_are_reused(base_url: str) -> None:
    eng = OpenAIEngine(base_url, NAME, max_concurrency=3, backoff=FAST)
    try:
        eng.start()
        for k in range(4):
            replies = eng.generate([f"call {k} prompt {i}" for i in range(5)], max_tokens=2)
            assert all(isinstance(r, str) for r in replies), replies
        assert "".join(eng.stream("the water", max_tokens=4))
        # the stats request itself comes on a connection of its own
        assert debug(base_url, "stats")["connections"] - 1 <= 3
        debug(base_url, "reset")

        async def calls() -> None:
            for k in range(4):
                replies = await eng.agenerate([f"a {k} {i}" for i in range(5)], max_tokens=2)
                assert all(isinstance(r, str) for r in replies), replies
            assert [c async for c in eng.astream("the water", max_tokens=4)]

        asyncio.run(calls())
        assert debug(base_url, "stats")["connections"] - 1 <= 3
    finally:
        eng.stop()


def test_replies_carry_the_servers_token_counts(engine: OpenAIEngine) -> None:
    for [reply] in (engine.generate(["the water is warm"], max_tokens=6),
                    asyncio.run(engine.agenerate(["the water is warm"], max_tokens=6))):  # fmt: skip
        assert isinstance(reply, Reply), reply
        assert reply.prompt_tokens is not None and reply.prompt_tokens > 0
        assert reply.completion_tokens is not None and 0 < reply.completion_tokens <= 6


def test_an_astream_closed_early_frees_its_slot_and_stop_from_a_loop_reopens(
    base_url: str,
) -> None:
    eng = OpenAIEngine(base_url, NAME, max_concurrency=1, backoff=FAST)

    async def main() -> str:
        chunks = eng.astream("the water", max_tokens=12)
        assert await anext(chunks)
        await chunks.aclose()  # early: the body stops at its next chunk, the slot is free
        assert eng._http.slots.held == 0
        # one slot: this request goes through only because the stream gave it back
        assert await asyncio.wait_for(eng.agenerate(["x"], max_tokens=2), 60)
        await asyncio.to_thread(eng.stop)  # from another thread, while this loop runs
        return "".join([c async for c in eng.astream("the water", max_tokens=4)])

    assert asyncio.run(main())  # reopened after stop
    assert eng._http.slots.held == 0
    eng.stop()


def test_transient_failures_are_retried(engine: OpenAIEngine, base_url: str) -> None:
    debug(base_url, "fail", n=2, status=503)
    (reply,) = engine.generate(["the water"], max_tokens=4)
    assert isinstance(reply, str), reply
    assert debug(base_url, "stats")["requests"] == 3
    debug(base_url, "reset")
    debug(base_url, "fail", n=2, status=429, retry_after=0)
    (areply,) = asyncio.run(engine.agenerate(["the water"], max_tokens=4))
    assert areply == reply
    assert debug(base_url, "stats")["requests"] == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_prompt_failing_past_its_retries_fails_alone(
    engine: OpenAIEngine, base_url: str, mode: str
) -> None:
    debug(base_url, "fail", n=50, status=503, match="POISON")
    prompts = ["a", "the POISON prompt", "b"]
    if mode == "sync":
        replies = engine.generate(prompts, max_tokens=4)
    else:
        replies = asyncio.run(engine.agenerate(prompts, max_tokens=4))
    assert isinstance(replies[0], str) and isinstance(replies[2], str), replies
    error = replies[1]
    assert isinstance(error, OpenAIEngineError), error
    text = str(error)
    assert "OpenAIEngine" in text and NAME in text and base_url in text and "503" in text
    assert "after 4 attempts" in text and error.attempts == 4 and error.status == 503
    assert debug(base_url, "stats")["requests"] == 2 + 4  # retries=3 by default


def test_client_errors_are_not_retried(engine: OpenAIEngine, base_url: str) -> None:
    (error,) = engine.generate(["the water"], n=2)  # the server answers 400
    assert isinstance(error, OpenAIEngineError) and error.status == 400
    assert "only n=1 is supported" in str(error)  # the server's own message
    assert debug(base_url, "stats")["requests"] == 1
    with pytest.raises(ValueError, match="max_tokens must be a whole number >= 1, got 0"):
        engine.generate(["the water"], max_tokens=0)  # checked here: no request is sent
    assert debug(base_url, "stats")["requests"] == 1
    unknown = OpenAIEngine(base_url, "no-such-model", backoff=FAST)
    (missing,) = unknown.generate(["x"])
    assert isinstance(missing, OpenAIEngineError) and missing.status == 404
    assert "does not exist" in str(missing)
    assert debug(base_url, "stats")["requests"] == 2
    unknown.stop()


def test_a_down_server_fails_fast() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    eng = OpenAIEngine(url, NAME, backoff=FAST, connect_timeout=2)
    begin = time.monotonic()
    with pytest.raises(OpenAIEngineError, match="cannot reach the server"):
        eng.start()
    (error,) = eng.generate(["x"])
    assert isinstance(error, OpenAIEngineError) and url in str(error) and NAME in str(error)
    assert "ConnectError" in str(error) and error.attempts == 4
    assert time.monotonic() - begin < 5
    assert eng.identity() == {"engine": "openai", "base_url": url, "model": NAME}
    eng.stop()


def test_streaming_chunks_join_to_the_reply(engine: OpenAIEngine) -> None:
    (reply,) = engine.generate(["hello world"], max_tokens=12)
    chunks = list(engine.stream("hello world", max_tokens=12))
    assert len(chunks) > 1 and "".join(chunks) == reply

    async def collect() -> list[str]:
        return [c async for c in engine.astream("hello world", max_tokens=12)]

    assert "".join(asyncio.run(collect())) == reply
    (structured,) = engine.generate(["x"], schema=SCHEMA, max_tokens=64)
    assert "".join(engine.stream("x", schema=SCHEMA, max_tokens=64)) == structured


def test_streams_retry_their_opening(engine: OpenAIEngine, base_url: str) -> None:
    debug(base_url, "fail", n=1, status=502)
    assert "".join(engine.stream("the water", max_tokens=6))
    assert debug(base_url, "stats")["requests"] == 2
    debug(base_url, "fail", n=1, status=400)
    with pytest.raises(OpenAIEngineError, match="HTTP 400"):
        list(engine.stream("the water", max_tokens=6))


def test_identity(base_url: str, tiny_llama: Path) -> None:
    eng = OpenAIEngine(base_url, NAME, api_key="secret")
    before = eng.identity()  # without start(): what the broker asks for a cache key
    assert before == {
        "engine": "openai",
        "base_url": base_url,
        "model": NAME,
        "id": NAME,
        "owned_by": "hypernodes-test",
        "root": str(tiny_llama),
    }
    eng.start()
    assert eng.identity() == before  # stable: no request time ("created") in it
    eng.stop()
    assert "secret" not in json.dumps(before)
    assert OpenAIEngine(base_url + "/", NAME).identity() == before


def test_an_llm_node_map_returns_validated_models(base_url: str) -> None:
    @llm_node(engine="o", output_name="summary", output_model=Summary, max_tokens=48)
    def summarize(review: str) -> str:
        return f"Summarize as JSON: {review}"

    reviews = [f"review {i}: the food was {w}" for i, w in enumerate(["good", "bad", "ok"] * 2)]
    eng = OpenAIEngine(base_url, NAME, max_concurrency=3, backoff=FAST)
    runner = Runner(engines={"o": eng}, cache=MemoryCache())
    out = runner.map(Graph([summarize]), {"review": reviews}, map_over="review", batch_size=4)
    assert len(out) == 6 and all(isinstance(row["summary"], Summary) for row in out)
    assert debug(base_url, "stats")["requests"] == 6
    again = runner.map(Graph([summarize]), {"review": reviews}, map_over="review", batch_size=4)
    assert again == out
    assert debug(base_url, "stats")["requests"] == 6  # all from the cache
    eng.stop()


def test_retry_after_is_honoured(engine: OpenAIEngine, base_url: str) -> None:
    debug(base_url, "fail", n=1, status=429, retry_after=0.5)
    begin = time.monotonic()
    (reply,) = engine.generate(["the water"], max_tokens=4)
    assert isinstance(reply, str), reply
    assert time.monotonic() - begin >= 0.5  # the back-off alone would wait about 0.04 s
    assert debug(base_url, "stats")["requests"] == 2


def test_pickles_as_its_configuration(engine: OpenAIEngine) -> None:
    import pickle

    engine.generate(["a"], max_tokens=2)  # a live client, locks: none of them travel
    copy = pickle.loads(pickle.dumps(engine))
    assert copy.identity() == engine.identity() and copy.backoff == engine.backoff
    assert copy.generate(["a"], max_tokens=2) == engine.generate(["a"], max_tokens=2)
    copy.stop()


def test_importing_the_engine_imports_no_http_client() -> None:
    code = (
        "import sys, hypernodes_chain.engines, hypernodes_chain.engines.openai_engine\n"
        "assert 'httpx' not in sys.modules and 'tenacity' not in sys.modules, sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
