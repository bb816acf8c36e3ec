"""Engines: named models shared by LLM nodes through a broker that starts them lazily.

Nothing here imports torch, transformers or an HTTP client at import time; each engine
imports its library when it starts.
"""

from __future__ import annotations

from ..exceptions import VLLMEngineError
from .base import Engine, Message, Prompt
from .broker import EngineBroker, EngineStatus, UnknownEngineError
from .ollama import OllamaEngine, OllamaError
from .openai_engine import OpenAIEngine, OpenAIEngineError
from .specs import SPEC_FORMS, engine_from_spec
from .tiny import build_tiny_model
from .transformers_engine import TransformersEngine
from .vllm_engine import VLLMEngine

__all__ = [
    "SPEC_FORMS",
    "Engine",
    "EngineBroker",
    "EngineStatus",
    "Message",
    "OllamaEngine",
    "OllamaError",
    "OpenAIEngine",
    "OpenAIEngineError",
    "Prompt",
    "TransformersEngine",
    "UnknownEngineError",
    "VLLMEngine",
    "VLLMEngineError",
    "build_tiny_model",
    "engine_from_spec",
]
