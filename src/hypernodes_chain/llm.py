"""LLM nodes: a function builds the prompt for one item; an engine answers a whole batch.

```python
@llm_node(engine="small", output_name="summary", output_model=Summary, max_tokens=128)
def summarize(review: str) -> str:
    return f"Summarize this review as JSON: {review}"
```

During ``map`` the node's invoker builds the prompts of a batch's cache misses and makes ONE
``generate`` call for them (``agenerate`` under `AsyncRunner`); under ``run`` a one-prompt
batch; under ``AsyncRunner.iter`` a single item's reply streams as `StreamingChunkEvent`s.
With ``output_model`` (pydantic) the engine gets its JSON schema and each reply is parsed
and validated; a reply that does not validate is asked again up to ``parse_retries`` times,
then becomes that item's `LLMOutputError` (the raw reply kept), and the other items go on.
The cache key chains the node's code and prompt with the engine's ``identity()``, the
sampling parameters, the system message and the schema. pydantic is imported only when a
node has an ``output_model``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .exceptions import LLMOutputError
from .node import Node

__all__ = ["LLMNode", "llm_node"]

_SAMPLING = ("temperature", "max_tokens", "top_p", "seed", "stop")


class LLMNode(Node[..., Any]):
    """A node whose function returns a prompt, answered by the engine named ``engine``."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        engine: str,
        output_name: str | None = None,
        output_model: type | None = None,
        system: str | None = None,
        name: str | None = None,
        cache: bool = True,
        parse_retries: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> None:
        super().__init__(func, output_name=output_name, name=name, cache=cache)
        if self.kind != "sync":
            msg = f"llm node {self.name!r}: the prompt function must be a plain def"
            raise TypeError(msg)
        if len(self.outputs) != 1:
            msg = f"llm node {self.name!r} has one output, got {self.outputs}"
            raise TypeError(msg)
        if not isinstance(engine, str) or not engine:
            msg = f"llm node {self.name!r}: engine= must name a registered engine"
            raise TypeError(msg)
        if output_model is not None and not callable(
            getattr(output_model, "model_validate_json", None)
        ):
            msg = f"llm node {self.name!r}: output_model must be a pydantic model class"
            raise TypeError(msg)
        if (
            isinstance(parse_retries, bool)
            or not isinstance(parse_retries, int)
            or parse_retries < 0
        ):
            msg = f"llm node {self.name!r}: parse_retries must be an int >= 0"
            raise ValueError(msg)
        self.engine = engine
        self.output_model = output_model
        self.system = system
        self.parse_retries = parse_retries
        self.sampling: dict[str, Any] = {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "top_p": top_p,
            "seed": seed,
            "stop": list(stop) if stop is not None else None,
        }

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of ``output_model`` (None without one)."""
        if self.output_model is None:
            return None
        schema: dict[str, Any] = self.output_model.model_json_schema()  # type: ignore[attr-defined]
        return schema

    def fingerprint_parts(self) -> list[tuple[str, Any]]:
        """The prompt function's parts, then what else decides the reply (the engine's own
        identity is added by the invoker, from the run's broker)."""
        schema = json.dumps(self.schema, sort_keys=True) if self.output_model else None
        extra = ("llm", self.engine, sorted(self.sampling.items()), self.system, schema)
        return [*super().fingerprint_parts(), ("value", extra)]

    def prompt(self, args: Sequence[Any]) -> Any:
        """The prompt of one item: the function's str or messages, with ``system`` first."""
        value = self.func(*args)
        if self.system is None:
            return value
        if isinstance(value, str):
            value = [{"role": "user", "content": value}]
        return [{"role": "system", "content": self.system}, *value]

    def parse(self, reply: str) -> Any:
        """The node's value for one reply: the text, or the validated model instance."""
        if self.output_model is None:
            return reply
        try:
            return self.output_model.model_validate_json(reply)  # type: ignore[attr-defined]
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise LLMOutputError(self.name, reply, exc) from exc

    def __repr__(self) -> str:
        return (
            f"<LLMNode {self.name}({', '.join(self.inputs)}) -> {self.outputs[0]} @ {self.engine}>"
        )


def llm_node(
    *,
    engine: str,
    output_name: str | None = None,
    output_model: type | None = None,
    system: str | None = None,
    name: str | None = None,
    cache: bool = True,
    parse_retries: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 256,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
) -> Callable[[Callable[..., Any]], LLMNode]:
    """Turn a prompt-building function into an LLM node answered by ``engine``.

    Parameters
    ----------
    engine
        The name the engine is registered under in the runner's ``engines=``.
    output_name
        The output's name (default: the function's name).
    output_model
        A pydantic model: the engine is given its JSON schema, each reply is validated into
        an instance (retried ``parse_retries`` times, then an `LLMOutputError` for the item).
    system
        A system message put before the prompt.
    temperature, max_tokens, top_p, seed, stop
        Sampling parameters, handed to the engine; they enter the cache key.
    """

    def wrap(func: Callable[..., Any]) -> LLMNode:
        return LLMNode(
            func, engine=engine, output_name=output_name, output_model=output_model,
            system=system, name=name, cache=cache, parse_retries=parse_retries,
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, seed=seed, stop=stop,
        )  # fmt: skip

    return wrap


def sampling_of(node: LLMNode) -> Mapping[str, Any]:
    """The sampling keywords to hand an engine (unset ones left out)."""
    return {k: v for k, v in node.sampling.items() if v is not None}
