"""TransformersEngine on a real tiny random Llama built offline (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypernodes_chain.engines.base import Engine
from hypernodes_chain.engines.transformers_engine import TransformersEngine

PROMPTS = [
    "the water",
    "hello world and more words here to make it long",
    "a",
    "yes no maybe so",
    "review: good food, bad service, 3 stars",
    "count to five",
]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 8},
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["title", "sentiment", "count"],
}


def check_schema(reply: object) -> None:
    assert isinstance(reply, str), reply
    value = json.loads(reply)  # strict: no raw control characters
    try:
        import jsonschema
    except ImportError:
        assert set(value) == {"title", "sentiment", "count"}
        assert isinstance(value["title"], str) and len(value["title"]) <= 8
        assert value["sentiment"] in {"positive", "negative", "neutral"}
        assert isinstance(value["count"], int) and 0 <= value["count"] <= 99
    else:
        jsonschema.validate(value, SCHEMA)


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> Any:
    eng = TransformersEngine(tiny_llama)
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def singles(engine: TransformersEngine) -> list[str | Exception]:
    """Greedy replies of PROMPTS generated one prompt at a time (no padding)."""
    return [engine.generate([p], max_tokens=16)[0] for p in PROMPTS]


def test_protocol_and_no_torch_at_import() -> None:
    assert isinstance(TransformersEngine("unused"), Engine)
    code = (
        "import sys, hypernodes_chain, hypernodes_chain.engines,"
        " hypernodes_chain.engines.transformers_engine;"
        " print(any(m in sys.modules for m in ('torch', 'transformers', 'xgrammar')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_batched_equals_one_by_one(engine: TransformersEngine, singles: list[Any]) -> None:
    assert all(isinstance(s, str) and s for s in singles)
    assert engine.generate(PROMPTS, max_tokens=16) == singles  # left padding is right


def test_replies_routed_to_their_prompts(tiny_llama: Path, singles: list[Any]) -> None:
    small = TransformersEngine(tiny_llama, max_batch_size=2)
    try:
        assert len(set(singles)) == len(singles)  # different prompts, different replies
        assert small.generate(PROMPTS, max_tokens=16) == singles  # starts on demand
        assert small.generate(PROMPTS[::-1], max_tokens=16) == singles[::-1]
    finally:
        small.stop()


def test_schema_replies_are_valid_json(engine: TransformersEngine) -> None:
    prompts = [f"review number {i}: " + " ".join(["good"] * i) for i in range(8)]
    for temperature in (0.0, 1.0):
        replies = engine.generate(
            prompts, schema=SCHEMA, max_tokens=64, temperature=temperature, top_p=0.9, seed=1
        )
        assert len(replies) == 8
        for reply in replies:
            check_schema(reply)


def test_schema_stream_matches_generate(engine: TransformersEngine) -> None:
    [reply] = engine.generate(["stream json"], schema=SCHEMA, max_tokens=64)
    check_schema(reply)
    assert "".join(engine.stream("stream json", schema=SCHEMA, max_tokens=64)) == reply


def test_truncated_schema_reply_is_an_item_error(engine: TransformersEngine) -> None:
    prompts = [f"item {i} " + "more " * i for i in range(6)]
    full = engine.generate(prompts, schema=SCHEMA, max_tokens=64)
    for reply in full:
        check_schema(reply)
    for budget in range(6, 40, 2):  # greedy: a shorter budget is a prefix of the same run
        replies = engine.generate(prompts, schema=SCHEMA, max_tokens=budget)
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors and len(errors) < len(replies):
            break
    else:
        pytest.fail("no budget where some replies finish and others do not")
    for reply, whole in zip(replies, full):
        if isinstance(reply, Exception):
            assert isinstance(reply, ValueError)
            assert str(reply) == (
                f"reply truncated at max_tokens={budget} before the schema was complete"
            )
        else:
            assert reply == whole


def test_start_stop_start_same_outputs(tiny_llama: Path, singles: list[Any]) -> None:
    eng = TransformersEngine(tiny_llama)
    eng.start()
    eng.start()  # idempotent
    first = eng.generate(PROMPTS, max_tokens=16)
    eng.stop()
    eng.stop()  # idempotent
    assert eng._model is None
    eng.start()
    assert eng.generate(PROMPTS, max_tokens=16) == first == singles
    eng.stop()


def test_seeded_sampling_is_reproducible(engine: TransformersEngine, singles: list[Any]) -> None:
    def sample(seed: int) -> list[Any]:
        return engine.generate(PROMPTS, max_tokens=16, temperature=1.0, top_p=0.95, seed=seed)

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c
    assert a != singles


def test_chat_messages(engine: TransformersEngine, tiny_llama: Path, tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    templated = "<s>system: be brief\n<s>user: hello\n<s>assistant:"
    [reply, same] = engine.generate([chat, templated], max_tokens=12)
    assert isinstance(reply, str) and reply == same

    plain = tmp_path / "no-template"
    shutil.copytree(tiny_llama, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    bare = TransformersEngine(plain)
    try:
        joined = "system: be brief\nuser: hello\nassistant:"
        assert bare.generate([chat], max_tokens=12) == bare.generate([joined], max_tokens=12)
    finally:
        bare.stop()


def test_bad_prompt_fails_only_its_entry(engine: TransformersEngine, singles: list[Any]) -> None:
    replies = engine.generate([PROMPTS[0], [{"role": "user"}], PROMPTS[1]], max_tokens=16)
    assert replies[0] == singles[0] and replies[2] == singles[1]
    assert isinstance(replies[1], TypeError)


def test_whole_call_errors_raise(engine: TransformersEngine) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate(PROMPTS, max_tokens=0)
    with pytest.raises(TypeError, match="list of prompts"):
        engine.generate("one string")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="local model folder"):
        TransformersEngine("/no/such/model").start()


def test_stream_joins_to_the_reply(engine: TransformersEngine, singles: list[Any]) -> None:
    chunks = list(engine.stream(PROMPTS[1], max_tokens=16))
    assert len(chunks) > 1
    assert "".join(chunks) == singles[1]


def test_async_twins(engine: TransformersEngine, singles: list[Any]) -> None:
    async def main() -> tuple[list[Any], list[Any], str]:
        together = await asyncio.gather(
            engine.agenerate(PROMPTS, max_tokens=16), engine.agenerate(PROMPTS[:2], max_tokens=16)
        )
        chunks = [c async for c in engine.astream(PROMPTS[1], max_tokens=16)]
        early = engine.astream(PROMPTS[1], max_tokens=200)
        async with contextlib.aclosing(early):
            async for _ in early:
                break  # closing early stops the generation and releases the engine
        assert not engine._lock.locked()
        return together[0], together[1], "".join(chunks)

    whole, part, streamed = asyncio.run(main())
    assert whole == singles and part == singles[:2] and streamed == singles[1]


def test_stream_closed_early_releases_the_engine(engine: TransformersEngine) -> None:
    chunks = engine.stream(PROMPTS[1], max_tokens=200)
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    assert not engine._lock.locked()
    assert isinstance(engine.generate(["after"], max_tokens=4)[0], str)


def test_stop_strings_cut(engine: TransformersEngine, singles: list[Any]) -> None:
    reply = singles[1]
    stop = reply[5:8]
    cut = reply[: reply.find(stop)]
    [got, other] = engine.generate([PROMPTS[1], PROMPTS[0]], max_tokens=16, stop=[stop, "\0"])
    assert got == cut
    assert other == singles[0][: singles[0].find(stop)] if stop in singles[0] else singles[0]
    assert "".join(engine.stream(PROMPTS[1], max_tokens=16, stop=stop)) == cut


def test_identity(tiny_llama: Path, tmp_path: Path, build_llama: Any) -> None:
    eng = TransformersEngine(tiny_llama)
    before = eng.identity()
    assert before["engine"] == "transformers"
    assert before["model"] == str(tiny_llama.resolve())
    assert before["revision"].startswith("sha256:")
    assert (before["dtype"], before["device"]) == ("default", "cpu")
    eng.start()
    assert eng.identity() == before
    eng.stop()
    assert eng.identity() == before

    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    copied = TransformersEngine(other).identity()
    assert copied["revision"] == before["revision"]  # same files, same revision
    build_llama(other, seed=1)  # new weights
    assert TransformersEngine(other).identity()["revision"] != before["revision"]
    assert TransformersEngine(tiny_llama, dtype="bfloat16").identity()["dtype"] == "bfloat16"
