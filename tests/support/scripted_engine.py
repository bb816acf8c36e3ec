"""`ScriptedEngine`: a deterministic engine whose replies are computed from the prompt.

It keeps the engine protocol of ``hypernodes_chain.engines.base`` and loads nothing, so a
test knows every reply exactly::

    ScriptedEngine("upper").generate(["hi there"])   # ["HI THERE"]
    ScriptedEngine("reverse").generate(["abc"])      # ["cba"]

A prompt's text is the str itself, or the contents of its chat messages joined by newlines
(a ``system=`` message included). Under a JSON schema the reply is a JSON object with one
value per property: a ``string`` property gets the text transformed as above, an ``integer``
one the number of words of the text. The engine pickles as its settings (never as started),
so it travels to worker processes (Dask, Daft) as a factory does. With ``log=`` (a file
path) it appends ``[mode, text]`` as a JSON line for each prompt it answers, from whichever
process answers it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from hypernodes_chain.engines.base import Prompt, Reply, chat_messages

__all__ = ["CountingEngine", "ScriptedEngine", "prompt_text"]

_TRANSFORMS = {"upper": str.upper, "reverse": lambda text: text[::-1]}


def prompt_text(prompt: Prompt) -> str:
    """The text a reply is computed from: the str, or the messages' contents."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m["content"]) for m in chat_messages(prompt))


class ScriptedEngine:
    """Replies computed from the prompt: ``mode`` is ``"upper"`` or ``"reverse"``.

    ``chunk_size`` cuts a streamed reply into chunks of that many characters; the chunks
    join to the reply `generate` gives. ``log`` is a file that records each prompt answered.
    """

    def __init__(
        self,
        mode: str = "upper",
        *,
        chunk_size: int = 3,
        max_concurrency: int = 4,
        log: str | None = None,
    ) -> None:
        if mode not in _TRANSFORMS:
            msg = f"mode must be one of {sorted(_TRANSFORMS)}, got {mode!r}"
            raise ValueError(msg)
        self.mode = mode
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.log = log
        self.live = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "live": False}  # a copy elsewhere starts on its own

    def __repr__(self) -> str:
        return f"ScriptedEngine({self.mode!r})"

    def start(self) -> None:
        self.live = True

    def stop(self) -> None:
        self.live = False

    def identity(self) -> dict[str, Any]:
        return {"engine": "scripted", "model": self.mode}

    def reply(self, prompt: Prompt, schema: Mapping[str, Any] | None = None) -> str:
        """The reply to one prompt (what `generate` gives for it)."""
        text = prompt_text(prompt)
        if schema is None:
            return _TRANSFORMS[self.mode](text)
        values: dict[str, Any] = {}
        for name, spec in schema.get("properties", {}).items():
            kind = spec.get("type")
            if kind == "string":
                values[name] = _TRANSFORMS[self.mode](text)
            elif kind == "integer":
                values[name] = len(text.split())
            else:
                msg = f"ScriptedEngine answers string and integer properties, not {name!r}: {spec}"
                raise ValueError(msg)
        return json.dumps(values)

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        if not self.live:
            raise RuntimeError(f"{self!r} was asked to generate before start()")
        replies: list[str | Exception] = [self.reply(p, schema) for p in prompts]
        if self.log is not None:
            with open(self.log, "a") as f:  # one short write: lines of processes never mix
                f.write("".join(json.dumps([self.mode, prompt_text(p)]) + "\n" for p in prompts))
        return replies

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        await asyncio.sleep(0)
        return self.generate(prompts, schema=schema, **sampling)

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        reply = self.generate([prompt], **sampling)[0]
        assert isinstance(reply, str)
        for at in range(0, len(reply), self.chunk_size):
            yield reply[at : at + self.chunk_size]

    async def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        for chunk in self.stream(prompt, **sampling):
            await asyncio.sleep(0)
            yield chunk


class CountingEngine(ScriptedEngine):
    """Replies as `ScriptedEngine`, each a `Reply` with words in and characters out."""

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        replies = super().generate(prompts, schema=schema, **sampling)
        return [
            Reply(r, prompt_tokens=len(prompt_text(p).split()), completion_tokens=len(r))
            if isinstance(r, str)
            else r
            for p, r in zip(prompts, replies)
        ]
