"""Human in the loop: a node asks a question with `interrupt` and waits for the answer.

The answer comes from a handler passed to ``run``/``map`` (``handlers={"approve": fn}``),
or, under ``AsyncRunner.iter``, from ``run.respond(answer)`` after an `InterruptEvent`.
While a node runs, a context variable holds its `Scope`: who asks (node, item, path) and
who can answer (the run's handlers, the iter session). No scope, no handler and no
session: `InterruptError`, which the core stamps with the node and item.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
from collections.abc import Mapping
from typing import Any, Protocol

from ._aio import run_coroutine, running_loop
from .events import EventBus, InterruptEvent
from .exceptions import InterruptError

__all__ = ["Scope", "ainterrupt", "interrupt"]

_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "hypernodes_interrupt_scope", default=None
)
_ids = itertools.count(1)


class Session(Protocol):
    """What `AsyncRunner.iter` offers: a place to park a question until ``respond``."""

    loop: asyncio.AbstractEventLoop

    def park(self, event: InterruptEvent) -> asyncio.Future[Any]:
        """Register the question; the returned future resolves with the answer."""
        ...


class Scope:
    """Who is asking (node, item, path) and who can answer (handlers, an iter session)."""

    __slots__ = ("bus", "handlers", "index", "loop", "node", "path", "session")

    def __init__(
        self,
        *,
        node: str,
        index: int | None,
        path: tuple[str, ...],
        handlers: Mapping[str, Any] | None,
        session: Session | None,
        bus: EventBus | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.node = node
        self.index = index
        self.path = path
        self.handlers = handlers
        self.session = session
        self.bus = bus
        self.loop = loop

    def enter(self) -> contextvars.Token[Scope | None]:
        return _SCOPE.set(self)

    @staticmethod
    def leave(token: contextvars.Token[Scope | None]) -> None:
        _SCOPE.reset(token)

    def _event(self, value: Any, name: str) -> InterruptEvent:
        return InterruptEvent(
            path=self.path, id=f"int-{next(_ids)}", name=name, value=value, node=self.node,
            index=self.index,
        )  # fmt: skip

    def _announce(self, event: InterruptEvent) -> None:
        if self.bus is not None:
            self.bus.publish(event)

    def ask(self, value: Any, name: str) -> Any:
        """Answer from a thread (sync node): call the handler or wait for ``respond``."""
        handler = self.handlers.get(name) if self.handlers else None
        on_loop_thread = self.loop is not None and running_loop() is self.loop
        if handler is not None:
            self._announce(self._event(value, name))
            answer = handler(value)
            if inspect.isawaitable(answer):
                answer = self._resolve(answer)
            return answer
        if self.session is not None and self.loop is not None and not on_loop_thread:
            # park the question on the runner's loop and block this worker thread until
            # run.respond() answers it (or the run is cancelled)
            session = self.session
            event = self._event(value, name)

            async def wait() -> Any:
                waiting = session.park(event)
                self._announce(event)
                return await waiting

            return asyncio.run_coroutine_threadsafe(wait(), self.loop).result()
        raise _no_answer(name)

    async def aask(self, value: Any, name: str) -> Any:
        """Answer inside the event loop (async node)."""
        handler = self.handlers.get(name) if self.handlers else None
        if handler is not None:
            self._announce(self._event(value, name))
            answer = handler(value)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer
        if self.session is not None:
            event = self._event(value, name)
            waiting = self.session.park(event)
            self._announce(event)
            return await waiting
        raise _no_answer(name)

    def _resolve(self, awaitable: Any) -> Any:
        if self.loop is not None and running_loop() is None:
            # a worker thread of an AsyncRunner: run the async handler on the runner's loop
            return asyncio.run_coroutine_threadsafe(_await(awaitable), self.loop).result()
        return run_coroutine(_await(awaitable))


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _no_answer(name: str) -> InterruptError:
    msg = (
        f"interrupt {name!r} has no handler: pass handlers={{{name!r}: fn}} to run/map, "
        f"or run under AsyncRunner.iter and answer with run.respond()"
    )
    return InterruptError(msg)


def interrupt(value: Any, name: str = "interrupt") -> Any:
    """Ask a question from inside a sync node and return the answer.

    Parameters
    ----------
    value
        What the handler (or the ``iter`` consumer) is shown.
    name
        Selects the handler in ``handlers={name: fn}``.

    Raises
    ------
    InterruptError
        Nobody can answer: no handler for ``name`` and no ``AsyncRunner.iter`` session.
    """
    scope = _SCOPE.get()
    if scope is None:
        raise _no_answer(name)
    return scope.ask(value, name)


async def ainterrupt(value: Any, name: str = "interrupt") -> Any:
    """The async twin of `interrupt`, for ``async def`` nodes."""
    scope = _SCOPE.get()
    if scope is None:
        raise _no_answer(name)
    return await scope.aask(value, name)
