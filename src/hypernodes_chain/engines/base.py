"""The engine protocol: a named model that starts lazily and can be stopped to free memory.

An engine is duck-typed; `Engine` spells out what the broker and LLM nodes call. A prompt is
a ``str`` or a list of chat messages ``{"role": ..., "content": ...}``. ``generate`` returns
one entry per prompt, in order: the reply text, or the exception of a prompt that failed
(after the engine's own retries), which fails that item only; an exception raised by
``generate`` itself fails every item of the batch. ``schema`` is a JSON schema (a dict) the
reply must follow; engines with constrained decoding enforce it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Engine",
    "Message",
    "Prompt",
    "Reply",
    "Sampling",
    "chat_messages",
]

DEFAULT_MAX_TOKENS = 256  # of every engine, and of `llm_node`

Message = Mapping[str, str]
Prompt = str | Sequence[Message]


@dataclass(frozen=True)
class Sampling:
    """The sampling keywords every engine takes, checked once (`Sampling.of`).

    ``max_tokens`` (default `DEFAULT_MAX_TOKENS`), ``temperature`` (0: greedy), ``top_p``,
    ``seed``, ``stop`` (a string or several); any other keyword is the engine's own and kept
    in ``extra`` (Ollama options, vLLM sampling parameters, ...). Hashable but for ``extra``.
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, sampling: Mapping[str, Any]) -> Sampling:
        """The keywords of a call (None values left out) as a checked `Sampling`.

        Raises
        ------
        ValueError
            ``max_tokens`` is not a whole number of at least 1, ``temperature`` is negative,
            or ``top_p`` is not in (0, 1].
        """
        given = {k: v for k, v in sampling.items() if v is not None}
        known = {f.name for f in fields(cls)} - {"extra"}
        own = {k: given.pop(k) for k in list(given) if k in known}
        stop = own.get("stop", ())
        own["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        out = cls(**own, extra=given)
        out._check()
        return out

    def _check(self) -> None:
        tokens = self.max_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"max_tokens must be a whole number >= 1, got {tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {list(self.stop)!r}")


class Reply(str):
    """A reply's text, with the tokens it took where the engine can tell (else None).

    An engine may return these in place of plain strings: they are strings, so nothing
    else changes, and LLM nodes add their counts to their events (`NodeFinished`).
    """

    __slots__ = ("completion_tokens", "prompt_tokens")
    prompt_tokens: int | None
    completion_tokens: int | None

    def __new__(
        cls, text: str, *, prompt_tokens: int | None = None, completion_tokens: int | None = None
    ) -> Reply:
        reply = super().__new__(cls, text)
        reply.prompt_tokens = prompt_tokens
        reply.completion_tokens = completion_tokens
        return reply

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reply, (str(self), self.prompt_tokens, self.completion_tokens))


def _reply(text: str, prompt_tokens: int | None, completion_tokens: int | None) -> Reply:
    return Reply(text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def chat_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """A prompt as chat messages: a str is one user message; each message of a list must
    be a mapping with ``role`` and ``content`` (else `TypeError`, naming it)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = []
    for message in prompt:
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise TypeError(f"a chat message is a mapping with role and content, got {message!r}")
        messages.append(dict(message))
    return messages


@runtime_checkable
class Engine(Protocol):
    """What an engine offers; see the module docstring for the contract of each call."""

    # requests in flight on the engine at once, whoever sends them (HTTP engines: a pool;
    # TransformersEngine: prompts per device batch, formed by its own scheduler)
    max_concurrency: int

    def start(self) -> None:
        """Load the model (idempotent)."""
        ...

    def stop(self) -> None:
        """Free the model's memory (idempotent); a later call starts it again."""
        ...

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """One reply (or the exception of a failed prompt) per prompt, in order."""
        ...

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """The async twin of `generate`."""
        ...

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """The token chunks of one reply, as they come."""
        ...

    def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream`."""
        ...

    def identity(self) -> dict[str, Any]:
        """What makes two replies comparable (model, revision or digest, engine kind);
        it enters the cache key of every LLM node that uses the engine."""
        ...
