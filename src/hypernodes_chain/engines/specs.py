"""Engines named by a one-line spec, as the command line and the runners take them.

::

    ollama:NAME              OllamaEngine(NAME): host $OLLAMA_HOST, else http://127.0.0.1:11434
    ollama:NAME@HOST         OllamaEngine(NAME, host=HOST), e.g. ollama:llama3.2@http://gpu:11434
    vllm:MODEL               VLLMEngine(MODEL): offline, the model held in this process
    vllm+server:MODEL        VLLMEngine(MODEL, mode="server"): a ``vllm serve`` subprocess
    transformers:PATH        TransformersEngine(PATH): a local Hugging Face model folder
    openai:URL@MODEL         OpenAIEngine(URL, MODEL), api key from $OPENAI_API_KEY if set

An Ollama spec splits at its first ``@`` (model names have none, a host URL may); an OpenAI
spec at its last (the URL may hold one, the model name does not). Nothing is started or
contacted, and no engine library is imported: engines import theirs when they start.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from .base import Engine

__all__ = ["SPEC_FORMS", "engine_from_spec"]

SPEC_FORMS = (
    "ollama:NAME[@HOST]",
    "vllm:MODEL",
    "vllm+server:MODEL",
    "transformers:PATH",
    "openai:URL@MODEL",
)


def _bad(spec: str, reason: str) -> ValueError:
    forms = ", ".join(SPEC_FORMS)
    return ValueError(f"bad engine spec {spec!r}: {reason}; accepted forms: {forms}")


def engine_from_spec(spec: str, **options: Any) -> Engine:
    """The engine ``spec`` names (see the module docstring), built but not started.

    ``options`` are keyword arguments of the engine's constructor (``device="cuda"`` for
    ``transformers:``, ``max_concurrency=4`` for ``ollama:`` or ``openai:``, vLLM engine
    arguments for ``vllm:``); one the engine does not take is its constructor's TypeError.
    For ``ollama:`` a ``host`` option is the default of ``@HOST``; for ``openai:`` an
    ``api_key`` option wins over ``$OPENAI_API_KEY``.

    Raises
    ------
    ValueError
        A malformed spec (unknown kind, empty name, ``openai:`` without ``@MODEL`` or an
        http(s) URL, ...); the message names the spec and lists the accepted forms.
    """
    if not isinstance(spec, str):
        raise TypeError(f"an engine spec is a str, got {type(spec).__name__}")
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    if not sep or not kind:
        raise _bad(spec, "no 'KIND:' prefix")
    if kind == "ollama":
        return _ollama(spec, rest, options)
    if kind in ("vllm", "vllm+server"):
        return _vllm(spec, kind, rest, options)
    if kind == "transformers":
        if not rest:
            raise _bad(spec, "no model folder after 'transformers:'")
        from .transformers_engine import TransformersEngine

        return TransformersEngine(rest, **options)
    if kind == "openai":
        return _openai(spec, rest, options)
    raise _bad(spec, f"unknown engine kind {kind!r}")


def _ollama(spec: str, rest: str, options: dict[str, Any]) -> Engine:
    from .ollama import OllamaEngine

    name, at, host = rest.partition("@")
    if not name:
        raise _bad(spec, "no model name after 'ollama:'")
    if at:
        if not host:
            raise _bad(spec, "no host after '@'")
        options = {**options, "host": host}
    return OllamaEngine(name, **options)


def _vllm(spec: str, kind: str, rest: str, options: dict[str, Any]) -> Engine:
    if not rest:
        raise _bad(spec, f"no model after '{kind}:'")
    from .vllm_engine import VLLMEngine  # imports no vllm: the engine does, at start()

    mode: Literal["offline", "server"] = "server" if kind == "vllm+server" else "offline"
    return VLLMEngine(rest, mode=mode, **options)


def _openai(spec: str, rest: str, options: dict[str, Any]) -> Engine:
    from .openai_engine import OpenAIEngine

    url, at, model = rest.rpartition("@")
    if not at:
        raise _bad(spec, "no '@MODEL' after the URL (openai:URL@MODEL)")
    if not model:
        raise _bad(spec, "no model name after the last '@'")
    if not url.startswith(("http://", "https://")) or url in ("http://", "https://"):
        raise _bad(spec, f"{url!r} is not an http(s) URL")
    if "api_key" not in options:
        options = {**options, "api_key": os.environ.get("OPENAI_API_KEY") or None}
    return OpenAIEngine(url, model, **options)
