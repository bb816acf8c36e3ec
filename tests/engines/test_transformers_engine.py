"""TransformersEngine on a real tiny random Llama built offline (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypernodes_chain import (
    AsyncRunner,
    EngineError,
    Graph,
    MemoryCache,
    Runner,
    TruncatedReplyError,
)
from hypernodes_chain.engines.base import Engine, Reply
from hypernodes_chain.engines.transformers_engine import TransformersEngine
from hypernodes_chain.llm import llm_node
from support.waiting import await_until, wait_until

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
            assert isinstance(reply, TruncatedReplyError) and isinstance(reply, ValueError)
            assert str(reply).startswith(
                f"reply truncated at max_tokens={budget} before the schema was complete ("
            )
            assert reply.max_tokens == budget
            assert reply.raw and whole.startswith(reply.raw)  # the text it had (greedy)
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


def test_prompts_encoded_together_as_one_by_one(
    engine: TransformersEngine, singles: list[Any]
) -> None:
    # a call's prompts go to the tokenizer at once; a text it refuses (a lone surrogate)
    # fails alone, and every other prompt gets the ids and the reply it gets alone
    chat = [{"role": "user", "content": "hello"}]
    prompts: list[Any] = [PROMPTS[0], chat, "", "bad \ud800 text", PROMPTS[1]]
    encoded, failed = engine._encode_all(prompts)
    assert list(failed) == [3] and isinstance(failed[3], TypeError)
    assert encoded == {i: engine._encode(prompts[i]) for i in (0, 1, 2, 4)}
    replies = engine.generate(prompts, max_tokens=16)
    assert replies[0] == singles[0] and replies[4] == singles[1]
    assert replies[1] == engine.generate([chat], max_tokens=16)[0]
    assert isinstance(replies[2], str) and isinstance(replies[3], TypeError)


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


# ---------------------------------------------------------------------------- the scheduler


class DeviceCalls:
    """Wraps the started engine's real ``model.generate``: records the prompt rows of each
    call (their token ids, padding dropped), can hold the first call until a condition holds
    or an event is set, and can make a call fail."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.rows: list[list[tuple[int, ...]]] = []
        self.entered = threading.Event()  # the first call has begun
        self.hold_until: Callable[[], bool] | None = None
        self.fail_if: Callable[[list[tuple[int, ...]]], bool] = lambda rows: False
        model = engine._model
        real = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            rows = [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)]
            self.rows.append(rows)
            if not self.entered.is_set():
                self.entered.set()
                if self.hold_until is not None:
                    wait_until(self.hold_until, "the condition the first call is held for", 60)
            if self.fail_if(rows):
                raise RuntimeError("device failure")
            return real(*args, **kwargs)

        model.generate = generate  # the instance attribute shadows the method

    def ids(self, prompts: list[str]) -> dict[tuple[int, ...], str]:
        return {tuple(self.engine._encode(p)): p for p in prompts}

    def prompts(self, call: int, known: dict[tuple[int, ...], str]) -> list[str]:
        return [known[row] for row in self.rows[call]]


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; the list gets its result or its exception."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def fresh(tiny_llama: Path) -> Any:
    """An engine of its own (its model's generate gets wrapped), started."""
    eng = TransformersEngine(tiny_llama, max_batch_size=16)
    eng.start()
    yield eng
    eng.stop()


ALPHA = [f"alpha {w} the water" for w in ("one", "two", "three", "four")]
BETA = [f"beta {w} good food" for w in ("five", "six", "seven", "eight")]


def test_two_callers_share_device_batches(fresh: TransformersEngine) -> None:
    together = fresh.generate(ALPHA + BETA, max_tokens=12)  # one call with every prompt
    calls = DeviceCalls(fresh)
    calls.hold_until = lambda: fresh._scheduler is not None and fresh._scheduler.waiting() == 8
    warm, _ = in_thread(lambda: fresh.generate(["hello"], max_tokens=12))
    calls.entered.wait(60)  # the device is busy: what comes next waits together
    a, a_out = in_thread(lambda: fresh.generate(ALPHA, max_tokens=12))
    b, b_out = in_thread(lambda: asyncio.run(fresh.agenerate(BETA, max_tokens=12)))
    for thread in (warm, a, b):
        thread.join(60)
    assert [len(rows) for rows in calls.rows] == [1, 8]  # one device batch for both callers
    assert sorted(calls.prompts(1, calls.ids(ALPHA + BETA))) == sorted(ALPHA + BETA)
    assert a_out == [together[:4]] and b_out == [together[4:]]  # greedy: the same replies


def test_groups_never_share_a_device_batch(fresh: TransformersEngine) -> None:
    other: dict[str, Any] = {
        "type": "object",
        "properties": {"label": {"enum": ["yes", "no"]}},
        "required": ["label"],
    }
    jobs: list[tuple[list[str], dict[str, Any]]] = [
        (ALPHA[:3], {"schema": SCHEMA, "max_tokens": 64}),
        (BETA[:3], {"schema": other, "max_tokens": 64}),
        (ALPHA[3:] + BETA[3:], {"max_tokens": 8}),
        (["count to five"], {"schema": SCHEMA, "max_tokens": 64}),  # joins the first group
    ]
    alone = [fresh.generate(prompts, **kw) for prompts, kw in jobs]
    calls = DeviceCalls(fresh)
    calls.hold_until = lambda: fresh._scheduler is not None and fresh._scheduler.waiting() == 9
    warm, _ = in_thread(lambda: fresh.generate(["hello"], max_tokens=4))
    calls.entered.wait(60)
    threads = []
    for n, (prompts, kw) in enumerate(jobs):  # queued in this order: oldest group first
        threads.append(in_thread(lambda p=prompts, k=kw: fresh.generate(p, **k)))
        wait_until(
            lambda n=n: (
                fresh._scheduler is not None
                and fresh._scheduler.waiting() == sum(len(p) for p, _ in jobs[: n + 1])
            ),
            f"the prompts of {n + 1} calls waiting at the scheduler",
            60,
        )
    for thread, _ in [(warm, None), *threads]:
        thread.join(60)
    known = calls.ids([p for prompts, _ in jobs for p in prompts])
    batches = [sorted(calls.prompts(i, known)) for i in range(1, len(calls.rows))]
    first = sorted(jobs[0][0] + jobs[3][0])
    assert batches == [first, sorted(jobs[1][0]), sorted(jobs[2][0])]
    assert [out for _, out in threads] == [[replies] for replies in alone]
    for reply in alone[0] + alone[3]:
        check_schema(reply)
    for reply in alone[1]:
        assert isinstance(reply, str) and json.loads(reply)["label"] in {"yes", "no"}


def test_a_failed_device_call_fails_its_batch_only(fresh: TransformersEngine) -> None:
    expected = fresh.generate(BETA, max_tokens=8)
    calls = DeviceCalls(fresh)
    alpha_ids = set(calls.ids(ALPHA))
    calls.fail_if = lambda rows: bool(alpha_ids & set(rows))
    calls.hold_until = lambda: fresh._scheduler is not None and fresh._scheduler.waiting() == 8
    warm, _ = in_thread(lambda: fresh.generate(["hello"], max_tokens=4))
    calls.entered.wait(60)
    a, a_out = in_thread(lambda: fresh.generate(ALPHA, max_tokens=4))  # another group
    b, b_out = in_thread(lambda: fresh.generate(BETA, max_tokens=8))
    for thread in (warm, a, b):
        thread.join(60)
    [failed] = a_out
    assert len(failed) == 4
    assert all(isinstance(r, RuntimeError) and str(r) == "device failure" for r in failed)
    assert b_out == [expected]
    calls.fail_if = lambda rows: False
    assert isinstance(fresh.generate(ALPHA[:1], max_tokens=4)[0], str)  # the engine goes on


def test_stop_fails_waiting_requests_and_restarts(fresh: TransformersEngine) -> None:
    calls = DeviceCalls(fresh)
    release = threading.Event()
    calls.hold_until = release.is_set
    on_device, first = in_thread(lambda: fresh.generate(["hello"], max_tokens=200))
    calls.entered.wait(60)
    waiting = [
        in_thread(lambda: fresh.generate(ALPHA, max_tokens=8)),
        in_thread(lambda: asyncio.run(fresh.agenerate(BETA, max_tokens=8))),
    ]
    wait_until(
        lambda: fresh._scheduler is not None and fresh._scheduler.waiting() == 8,
        "8 prompts waiting at the scheduler",
        60,
    )
    stopper, _ = in_thread(fresh.stop)
    for thread, _ in [(on_device, first), *waiting]:
        thread.join(60)  # every caller is answered while the device call still runs
        assert not thread.is_alive()
    release.set()
    stopper.join(60)
    for out in [first, *(out for _, out in waiting)]:
        [error] = out
        assert isinstance(error, EngineError) and isinstance(error, RuntimeError)
        assert str(error) == (
            f"{fresh!r} was stopped before this request was answered "
            "(a later call starts the engine again)"
        )
    assert fresh._model is None and fresh._scheduler is None
    assert isinstance(fresh.generate(ALPHA[:1], max_tokens=4)[0], str)  # starts again


def queued(engine: TransformersEngine) -> set[tuple[int, ...]]:
    """The token ids of the prompts waiting in the engine's queue."""
    scheduler = engine._scheduler
    if scheduler is None:
        return set()
    with scheduler._cond:
        return {tuple(e.item) for g in scheduler._groups.values() for e in g.entries}


@pytest.mark.parametrize("runner_class", [Runner, AsyncRunner])
def test_two_llm_nodes_of_one_map_share_device_batches(
    fresh: TransformersEngine, runner_class: type
) -> None:
    @llm_node(engine="small", output_name="first", max_tokens=8)
    def first(text: str) -> str:
        return f"alpha {text}"

    @llm_node(engine="small", output_name="second", max_tokens=8, cache=False)
    def second(text: str) -> str:
        return f"beta {text}"

    texts = [f"the water {w}" for w in ("one", "two", "three", "four", "five", "six")]
    alpha, beta = [f"alpha {t}" for t in texts], [f"beta {t}" for t in texts]
    expected = fresh.generate(alpha + beta, max_tokens=8)
    runner = runner_class(engines={"small": fresh}, cache=MemoryCache())
    graph = Graph(nodes=[first, second])

    def run_map(items: list[str]) -> list[dict[str, Any]]:
        out = runner.map(graph, {"text": items}, map_over="text", batch_size=1)
        return asyncio.run(out) if asyncio.iscoroutine(out) else out  # type: ignore[no-any-return]

    run_map(texts[:3])  # cached: in these items' batches only the second node asks
    calls = DeviceCalls(fresh)
    known = calls.ids(alpha + beta)
    # the device is busy until prompts of both nodes wait: they join one device batch
    calls.hold_until = lambda: {known[i].split()[0] for i in queued(fresh)} == {"alpha", "beta"}
    warm, _ = in_thread(lambda: fresh.generate(["hello"], max_tokens=4))
    calls.entered.wait(60)
    out = run_map(texts)
    warm.join(60)
    assert [row["first"] for row in out] == expected[:6]
    assert [row["second"] for row in out] == expected[6:]
    batches = [calls.prompts(i, known) for i in range(1, len(calls.rows))]
    assert set(batches[0]) & set(alpha) and set(batches[0]) & set(beta), batches
    assert sorted(p for b in batches for p in b) == sorted(alpha[3:] + beta)  # each once
    assert all(len(b) <= fresh.max_batch_size for b in batches)


def test_agenerate_holds_no_thread_and_cancel_drops_its_prompts(
    fresh: TransformersEngine, singles: list[Any]
) -> None:
    async def no_threads() -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        gate = threading.Event()
        blocker = loop.run_in_executor(None, gate.wait)  # the loop's only worker thread
        try:
            calls = [fresh.agenerate([p], max_tokens=16) for p in PROMPTS]
            return await asyncio.wait_for(asyncio.gather(*calls), 60)
        finally:
            gate.set()
            await blocker

    assert asyncio.run(no_threads()) == [[s] for s in singles]

    calls = DeviceCalls(fresh)
    release = threading.Event()
    calls.hold_until = release.is_set
    warm, _ = in_thread(lambda: fresh.generate(["hello"], max_tokens=4))
    calls.entered.wait(60)

    async def cancelled() -> None:
        task = asyncio.create_task(fresh.agenerate(ALPHA, max_tokens=4))
        await await_until(lambda: len(queued(fresh)) == 4, "the 4 prompts queued")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    release.set()
    warm.join(60)
    assert fresh.generate(BETA[:1], max_tokens=4) == fresh.generate(BETA[:1], max_tokens=4)
    assert [len(rows) for rows in calls.rows] == [1, 1, 1]  # ALPHA never reached the device
    assert fresh._scheduler is not None and fresh._scheduler.waiting() == 0


def test_replies_count_their_tokens(engine: TransformersEngine) -> None:
    replies = engine.generate(PROMPTS[:3], max_tokens=16)
    for prompt, reply in zip(PROMPTS, replies):
        assert isinstance(reply, Reply)
        assert reply.prompt_tokens == len(engine._encode(prompt))
        assert reply.completion_tokens is not None and 0 < reply.completion_tokens <= 16
    [json_reply] = engine.generate(["json"], schema=SCHEMA, max_tokens=64)
    assert isinstance(json_reply, Reply) and json_reply.completion_tokens


def test_an_engine_dropped_unstopped_ends_its_scheduler(tiny_llama: Path) -> None:
    eng = TransformersEngine(tiny_llama)
    assert isinstance(eng.generate(["a"], max_tokens=2)[0], str)
    assert eng._scheduler is not None
    thread = eng._scheduler._thread
    gone = weakref.ref(eng)
    del eng
    gc.collect()
    assert gone() is None  # the scheduler thread does not keep the engine (and model) alive
    thread.join(60)
    assert not thread.is_alive()
