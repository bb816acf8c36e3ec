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
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from . import hashing
from .engines.base import DEFAULT_MAX_TOKENS
from .events import StreamingChunkEvent
from .exceptions import EngineReplyError, LLMOutputError
from .node import Node
from .plan import Step
from .runners._effects import Awaiting, Either
from .runners._invoke import NodeInvoker, register_invoker
from .runners._keys import node_fingerprint
from .runners._work import ColumnCall, ItemCall, Settings

__all__ = ["LLMNode", "llm_node"]

_SAMPLING = ("temperature", "max_tokens", "top_p", "seed", "stop")


class LLMNode(Node[..., Any]):
    """A node whose function returns a prompt, answered by the engine named ``engine``."""

    direct = False  # its function builds the prompt; the invoker asks the engine

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
        max_tokens: int = DEFAULT_MAX_TOKENS,
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

    def output_type(self, output: str) -> Any:
        """What the node's value is: an ``output_model`` instance, else the reply text
        (the function's own annotation is the prompt's type, not the value's)."""
        return self.output_model if self.output_model is not None else str

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
    max_tokens: int = DEFAULT_MAX_TOKENS,
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


# -- how an LLM node is called ---------------------------------------------------------------

Body = Generator[Any, Any, Any]


def _broker(settings: Settings | None, node: LLMNode) -> Any:
    broker = None if settings is None else settings.engines
    if broker is None:
        msg = (
            f"llm node {node.name!r} needs engine {node.engine!r}, but the runner has no "
            f"engines: pass Runner(engines={{{node.engine!r}: ...}}) (or an EngineBroker)"
        )
        raise LookupError(msg)
    return broker


def _generate(broker: Any, node: LLMNode, prompts: list[Any]) -> list[Any]:
    with broker.acquire(node.engine) as engine:
        return list(engine.generate(prompts, schema=node.schema, **sampling_of(node)))


async def _agenerate(broker: Any, node: LLMNode, prompts: list[Any]) -> list[Any]:
    # no limit here: ``max_concurrency`` is the engine's own, over every caller at once
    async with broker.aacquire(node.engine) as engine:
        return list(await engine.agenerate(prompts, schema=node.schema, **sampling_of(node)))


async def _astream(broker: Any, node: LLMNode, prompt: Any, call: ItemCall) -> str:
    chunks = []
    async with broker.aacquire(node.engine) as engine:
        async for chunk in engine.astream(prompt, **sampling_of(node)):
            chunks.append(chunk)
            if call.bus is not None:
                event = StreamingChunkEvent(
                    path=call.path, node=node.name, chunk=chunk, index=call.index
                )
                call.bus.publish(event)
    return "".join(chunks)


def _later(broker: Any, node: LLMNode, batch: list[Any]) -> Callable[[], Any]:
    return lambda: _agenerate(broker, node, batch)


class LLMInvoker(NodeInvoker):
    """One ``generate`` per column of cache misses (``agenerate`` under AsyncRunner); replies
    parsed per item; an item whose reply does not validate is asked again."""

    def __init__(self, step: Step) -> None:
        node = step.node
        assert isinstance(node, LLMNode)
        self.node = node

    def engine_of(self, node: Any) -> str | None:
        return self.node.engine

    def fingerprint(self, node: Any, settings: Settings) -> str | None:
        own = node_fingerprint(node)
        broker = settings.engines
        if own is None or broker is None:
            return own
        identity = hashing.fingerprint(broker.identity(self.node.engine))
        return None if identity is None else hashing.combine(own, identity)

    def item(self, call: ItemCall) -> Body:
        node = self.node
        broker = _broker(call.settings, node)
        prompt = node.prompt(call.args)
        session = call.local.session if call.local is not None else None
        if session is not None and call.bus is not None and node.output_model is None:
            # under AsyncRunner.iter: the reply's tokens stream out as they come
            reply = yield Awaiting(lambda: _astream(broker, node, prompt, call))
            return node.parse(reply)
        values, failed = yield from self._answer(broker, [prompt], call)
        if 0 in failed:
            raise failed[0]
        return values[0]

    def column(self, call: ColumnCall) -> Body:
        node = self.node
        broker = _broker(call.settings, node)
        prompts: dict[int, Any] = {}
        failed: dict[int, BaseException] = {}
        for i, row in enumerate(call.rows):
            try:
                prompts[i] = node.prompt(row)
            except Exception as exc:
                failed[i] = exc
        order = sorted(prompts)
        values, bad = yield from self._answer(broker, [prompts[i] for i in order], call)
        out: list[Any] = [None] * call.n
        for k, i in enumerate(order):
            if k in bad:
                failed[i] = bad[k]
            else:
                out[i] = values[k]
        return out, failed

    def _answer(self, broker: Any, prompts: list[Any], call: ItemCall | ColumnCall) -> Body:
        """Ask the engine, parse each reply; ask again for the ones that did not validate.
        The tokens of every reply (where the engine tells them) are added to ``call``."""
        node = self.node
        values: list[Any] = [None] * len(prompts)
        failed: dict[int, BaseException] = {}
        todo = list(range(len(prompts)))
        for attempt in range(node.parse_retries + 1):
            batch = [prompts[i] for i in todo]
            replies = yield Either(_generate, (broker, node, batch), _later(broker, node, batch))
            if len(replies) != len(batch):
                msg = f"engine {node.engine!r} gave {len(replies)} replies for {len(batch)} prompts"
                raise RuntimeError(msg)
            _count_tokens(call, replies)
            again = []
            for k, (i, reply) in enumerate(zip(todo, replies)):
                if isinstance(reply, Exception):
                    failed[i] = reply
                    continue
                if not isinstance(reply, str):
                    failed[i] = EngineReplyError(node.engine, k, len(batch), reply)
                    continue
                try:
                    values[i] = node.parse(reply)
                    failed.pop(i, None)
                except LLMOutputError as exc:
                    failed[i] = exc
                    if attempt < node.parse_retries:
                        again.append(i)
            todo = again
            if not todo:
                break
        return values, failed


def _count_tokens(call: ItemCall | ColumnCall, replies: Sequence[object]) -> None:
    """Add the replies' (prompt, completion) tokens to the call's, where engines tell."""
    prompt = completion = 0
    for reply in replies:
        prompt += getattr(reply, "prompt_tokens", None) or 0
        completion += getattr(reply, "completion_tokens", None) or 0
    if prompt or completion:
        before = call.tokens or (0, 0)
        call.tokens = (before[0] + prompt, before[1] + completion)


register_invoker(LLMNode, LLMInvoker)
