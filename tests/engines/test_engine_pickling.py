"""Engines travel as their constructor arguments: a process that unpickles one builds and
starts its own, so one ``engines={"small": TransformersEngine(path)}`` serves every runner,
DaskRunner's worker processes included."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hypernodes_chain import DaskRunner, Graph, Runner
from hypernodes_chain.engines import EngineBroker
from hypernodes_chain.engines.ollama import OllamaEngine
from hypernodes_chain.engines.openai_engine import OpenAIEngine
from hypernodes_chain.engines.transformers_engine import TransformersEngine
from hypernodes_chain.engines.vllm_engine import VLLMEngine
from hypernodes_chain.events import EngineStarted
from hypernodes_chain.llm import llm_node

cloudpickle = pytest.importorskip("cloudpickle")

# (engine built with options other than the defaults, the attributes that must survive)
ENGINES: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "transformers": (
        lambda: TransformersEngine(
            "/models/small", dtype="float32", max_batch_size=3, batch_wait=0.25
        ),
        ("model", "device", "dtype", "max_batch_size", "max_concurrency", "batch_wait"),
    ),
    "ollama": (
        lambda: OllamaEngine(
            "llama3.2", host="http://gpu:11434", keep_alive="7m", max_concurrency=2, retries=5
        ),
        ("model", "host", "keep_alive", "max_concurrency", "options", "retries", "timeout"),
    ),
    "openai": (
        lambda: OpenAIEngine(
            "http://gpu:8000/v1", "m", api_key="k", max_concurrency=3, headers={"X-A": "b"}
        ),
        ("base_url", "model", "api_key", "max_concurrency", "retries", "headers"),
    ),
    "vllm": (
        lambda: VLLMEngine("/models/small", mode="server", max_concurrency=5, dtype="float32"),
        ("model", "mode", "max_concurrency", "startup_timeout", "engine_args"),
    ),
}


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_an_engine_pickles_as_its_arguments(kind: str, dumps: Callable[[Any], bytes]) -> None:
    make, attributes = ENGINES[kind]
    engine = make()
    copy = pickle.loads(dumps(engine))
    assert type(copy) is type(engine) and copy is not engine
    assert repr(copy) == repr(engine)
    assert {a: getattr(copy, a) for a in attributes} == {a: getattr(engine, a) for a in attributes}


PROMPTS = ["the water", "hello world and more words", "count to five"]


def test_a_started_transformers_engine_travels_unstarted(tiny_llama: Path) -> None:
    """The copy of a started engine holds no model, thread or lock of the original: it
    loads its own on first use and answers the same (greedy) replies."""
    engine = TransformersEngine(tiny_llama, max_batch_size=2)
    engine.start()
    try:
        replies = engine.generate(PROMPTS, max_tokens=8)
        for dumps in (pickle.dumps, cloudpickle.dumps):
            copy = pickle.loads(dumps(engine))
            assert repr(copy) == repr(engine) and copy.max_batch_size == 2
            assert copy._model is None and copy._scheduler is None  # nothing loaded yet
            assert copy.generate(PROMPTS, max_tokens=8) == replies
            assert copy._model is not engine._model  # it loaded its own
            copy.stop()
    finally:
        engine.stop()


def test_a_broker_of_engine_objects_pickles_unstarted(tiny_llama: Path) -> None:
    engine = TransformersEngine(tiny_llama)
    broker = EngineBroker({"small": engine})
    with broker.acquire("small"):
        copy = pickle.loads(pickle.dumps(broker))  # was "cannot be pickled ... factory"
    assert copy.status()["small"]["live"] is False
    with copy.acquire("small") as rebuilt:
        assert rebuilt is not engine and repr(rebuilt) == repr(engine)
    copy.close()
    broker.close()


@llm_node(engine="small", output_name="reply", max_tokens=8)
def reply(text: str) -> str:
    return f"say: {text}"


@pytest.mark.slow  # two worker processes load torch and the model
def test_dask_workers_build_their_own_engine_from_an_engine_object(tiny_llama: Path) -> None:
    """``engines={"small": TransformersEngine(path)}`` under DaskRunner as under Runner: each
    worker process that runs a batch builds and starts its own engine."""
    distributed = pytest.importorskip("distributed")
    graph = Graph([reply], name="reply")
    texts = [f"{w} {i}" for i, w in enumerate(["the water", "hello", "five", "yes"] * 4)]
    engines = {"small": TransformersEngine(tiny_llama)}
    events: list[Any] = []
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, distributed.Client(cluster, set_as_default=False) as client:  # fmt: skip
        runner = DaskRunner(client, engines=engines, callbacks=[events.append])
        remote = runner.map(graph, {"text": texts}, map_over="text", batch_size=4)
        workers = len(client.scheduler_info()["workers"])
    starts = [e for e in events if isinstance(e, EngineStarted)]
    assert 1 <= len(starts) <= workers, "at most one start per worker process"
    assert engines["small"]._model is None, "the driver's engine was never started"
    broker = EngineBroker(engines)  # the same engine object, under Runner
    with broker, Runner(engines=broker) as local:
        assert local.map(graph, {"text": texts}, map_over="text", batch_size=4) == remote
    assert all(isinstance(r["reply"], str) for r in remote)
