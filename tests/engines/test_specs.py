"""engine_from_spec: one-line engine specs to engine objects (built, never started)."""

from __future__ import annotations

import importlib.util

import pytest

from hypernodes_chain.engines import (
    SPEC_FORMS,
    Engine,
    OllamaEngine,
    OpenAIEngine,
    TransformersEngine,
    engine_from_spec,
)

HAS_VLLM_ENGINE = importlib.util.find_spec("hypernodes_chain.engines.vllm_engine") is not None


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_ollama_default_host() -> None:
    engine = engine_from_spec("ollama:llama3.2")
    assert isinstance(engine, OllamaEngine) and isinstance(engine, Engine)
    assert engine.model == "llama3.2"
    assert engine.host == "http://127.0.0.1:11434"


def test_ollama_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:9999")
    engine = engine_from_spec("ollama:qwen2.5:0.5b")
    assert isinstance(engine, OllamaEngine)
    assert engine.model == "qwen2.5:0.5b"  # a tag's ':' stays in the name
    assert engine.host == "http://0.0.0.0:9999"


@pytest.mark.parametrize(
    ("spec", "model", "host"),
    [
        ("ollama:llama3.2@http://gpu-box:11500", "llama3.2", "http://gpu-box:11500"),
        ("ollama:me/model:q4@https://ollama.example", "me/model:q4", "https://ollama.example:443"),
        ("ollama:tiny@127.0.0.1:8080", "tiny", "http://127.0.0.1:8080"),
        ("  ollama:tiny@http://[::1]:7000  ", "tiny", "http://[::1]:7000"),
    ],
)
def test_ollama_with_host(
    spec: str, model: str, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "elsewhere:1")  # the spec's host wins
    engine = engine_from_spec(spec)
    assert isinstance(engine, OllamaEngine)
    assert (engine.model, engine.host) == (model, host)


def test_ollama_options() -> None:
    engine = engine_from_spec("ollama:tiny", max_concurrency=2, host="http://h:1")
    assert isinstance(engine, OllamaEngine)
    assert engine.max_concurrency == 2 and engine.host == "http://h:1"
    engine = engine_from_spec("ollama:tiny@http://spec:2", host="http://h:1")
    assert isinstance(engine, OllamaEngine) and engine.host == "http://spec:2"


def test_transformers() -> None:
    engine = engine_from_spec("transformers:/models/tiny")
    assert isinstance(engine, TransformersEngine)
    assert engine.model == "/models/tiny" and engine.device == "cpu"
    engine = engine_from_spec("transformers:/models/a@b", device="cuda:1", max_batch_size=8)
    assert isinstance(engine, TransformersEngine)
    assert engine.model == "/models/a@b"  # no '@' splitting for paths
    assert engine.device == "cuda:1" and engine.max_batch_size == 8


def test_transformers_unknown_option_is_the_constructors_type_error() -> None:
    with pytest.raises(TypeError, match="keep_alive"):
        engine_from_spec("transformers:/m", keep_alive="5m")


def test_openai() -> None:
    engine = engine_from_spec("openai:http://127.0.0.1:8000/v1@qwen")
    assert isinstance(engine, OpenAIEngine) and isinstance(engine, Engine)
    assert engine.base_url == "http://127.0.0.1:8000/v1"
    assert engine.model == "qwen" and engine.api_key is None


def test_openai_splits_at_the_last_at(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    engine = engine_from_spec("openai:https://user@api.example.com/v1/@org/model-1")
    assert isinstance(engine, OpenAIEngine)
    assert engine.base_url == "https://user@api.example.com/v1"
    assert engine.model == "org/model-1" and engine.api_key == "sk-test"
    given = engine_from_spec("openai:http://h/v1@m", api_key="mine", max_concurrency=3)
    assert isinstance(given, OpenAIEngine)
    assert given.api_key == "mine" and given.max_concurrency == 3


@pytest.mark.skipif(not HAS_VLLM_ENGINE, reason="hypernodes_chain.engines.vllm_engine not here")
@pytest.mark.parametrize(("kind", "mode"), [("vllm", "offline"), ("vllm+server", "server")])
def test_vllm(kind: str, mode: str) -> None:
    from hypernodes_chain.engines.vllm_engine import VLLMEngine  # imports no vllm

    engine = engine_from_spec(f"{kind}:/models/qwen")
    assert isinstance(engine, VLLMEngine)
    assert engine.model == "/models/qwen" and engine.mode == mode


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "no 'KIND:' prefix"),
        ("llama3.2", "no 'KIND:' prefix"),
        (":llama3.2", "no 'KIND:' prefix"),
        ("olama:llama3.2", "unknown engine kind 'olama'"),
        ("OLLAMA:llama3.2", "unknown engine kind 'OLLAMA'"),
        ("ollama:", "no model name after 'ollama:'"),
        ("ollama:@http://h:1", "no model name after 'ollama:'"),
        ("ollama:tiny@", "no host after '@'"),
        ("vllm:", "no model after 'vllm:'"),
        ("vllm+server:", "no model after 'vllm+server:'"),
        ("transformers:", "no model folder after 'transformers:'"),
        ("openai:http://127.0.0.1:8000/v1", "no '@MODEL' after the URL"),
        ("openai:http://127.0.0.1:8000/v1@", "no model name after the last '@'"),
        ("openai:127.0.0.1:8000/v1@m", "'127.0.0.1:8000/v1' is not an http(s) URL"),
        ("openai:@m", "'' is not an http(s) URL"),
        ("openai:http://@m", "'http://' is not an http(s) URL"),
    ],
)
def test_bad_specs_name_the_spec_and_the_forms(spec: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        engine_from_spec(spec)
    message = str(info.value)
    assert message.startswith(f"bad engine spec {spec!r}: {reason}")
    assert all(form in message for form in SPEC_FORMS)


def test_a_spec_is_a_str() -> None:
    with pytest.raises(TypeError, match="an engine spec is a str"):
        engine_from_spec(None)  # type: ignore[arg-type]
