"""An output model's strings without a bound: under TransformersEngine they get one that lets
the reply close within ``max_tokens``, so the tiny random model's replies all validate; other
engines get the model's schema as it is."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")
pydantic = pytest.importorskip("pydantic")

from hypernodes_chain import Graph, ItemFailure, Runner  # noqa: E402
from hypernodes_chain.engines import TransformersEngine  # noqa: E402
from hypernodes_chain.llm import llm_node  # noqa: E402


class Summary(pydantic.BaseModel):
    title: str
    sentiment: Literal["positive", "negative", "neutral"]


@llm_node(engine="small", output_name="summary", output_model=Summary, max_tokens=48)
def summarize(text: str) -> str:
    return f"Summarize this review as JSON: {text}"


TEXTS = [f"review {i}: {'good' if i % 2 else 'slow and bad'} value" for i in range(32)]


def test_the_tiny_model_closes_every_open_string_in_time(tiny_llama: Path) -> None:
    # without a bound, its titles run on to max_tokens: "reply truncated at max_tokens=48"
    engine = TransformersEngine(tiny_llama)
    try:
        rows = Runner(engines={"small": engine}).map(
            Graph(nodes=[summarize]), {"text": TEXTS}, map_over="text", on_error="collect"
        )
    finally:
        engine.stop()
    failures = [row for row in rows if isinstance(row, ItemFailure)]
    assert not failures, failures[0].error
    # {"title": "", "sentiment": "positive"} is 38 bytes: 10 left, 4 bytes a character
    assert all(len(row["summary"].title) <= 2 for row in rows)


class Recording:
    """An engine that keeps the schemas it is given and answers a fixed reply."""

    def __init__(self) -> None:
        self.schemas: list[Mapping[str, Any] | None] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def identity(self) -> dict[str, Any]:
        return {"engine": "recording"}

    def generate(
        self, prompts: Sequence[Any], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str]:
        self.schemas.append(schema)
        return [json.dumps({"title": "a long title", "sentiment": "neutral"})] * len(prompts)


def test_other_engines_get_the_models_schema_as_it_is() -> None:
    engine = Recording()
    out = Runner(engines={"small": engine}).run(Graph(nodes=[summarize]), {"text": "hi"})
    assert out["summary"].title == "a long title"
    assert engine.schemas == [Summary.model_json_schema()]
