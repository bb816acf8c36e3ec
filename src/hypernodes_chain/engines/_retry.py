"""One retry policy for the HTTP engines: exponential back-off with jitter (tenacity).

Which failures are transient is the engine's to say (a predicate over the exception: the
status codes and transport errors of its client). The wait before attempt ``k + 1`` is
``first * 2**(k - 1)`` seconds, at most ``most``, plus up to ``first`` seconds of jitter, and
never less than the server's ``Retry-After`` (an exception's ``retry_after`` attribute, in
seconds, honoured up to a minute). The last failure is re-raised as it is, so the engine
words the item's error. tenacity is imported on first use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._optional import optional

__all__ = ["RetryPolicy"]

T = TypeVar("T")

MAX_RETRY_AFTER = 60.0  # seconds: the longest Retry-After that is honoured


class RetryPolicy:
    """Retry ``retries`` times what ``transient`` accepts, backing off exponentially.

    Parameters
    ----------
    retries
        Extra attempts after the first (>= 0).
    transient
        Whether a failure is worth another attempt.
    backoff
        ``(first, most)``: seconds of the first wait and the cap of the back-off; the jitter
        is up to ``first`` seconds.
    """

    def __init__(
        self,
        *,
        retries: int,
        transient: Callable[[BaseException], bool],
        backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        if retries < 0:
            msg = f"retries must be >= 0, got {retries}"
            raise ValueError(msg)
        self.retries = retries
        self.transient = transient
        self.backoff = (float(backoff[0]), float(backoff[1]))

    def _wait(self, tenacity: Any) -> Callable[[Any], float]:
        first, most = self.backoff
        backoff = tenacity.wait_exponential(multiplier=first, max=most) + tenacity.wait_random(
            0, first
        )

        def wait(state: Any) -> float:
            seconds = float(backoff(state))
            exc = state.outcome.exception() if state.outcome is not None else None
            retry_after = getattr(exc, "retry_after", None)
            if isinstance(retry_after, int | float):
                seconds = max(seconds, min(float(retry_after), MAX_RETRY_AFTER))
            return seconds

        return wait

    def _kwargs(self) -> dict[str, Any]:
        tenacity = optional("tenacity", "an HTTP engine", "llm")
        return {
            "stop": tenacity.stop_after_attempt(self.retries + 1),
            "wait": self._wait(tenacity),
            "retry": tenacity.retry_if_exception(self.transient),
            "reraise": True,
        }

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, again after each transient failure; the last failure is raised."""
        tenacity = optional("tenacity", "an HTTP engine", "llm")
        result: T = tenacity.Retrying(**self._kwargs())(fn)
        return result

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        """The async twin of `call`: ``await fn()``, backing off with ``asyncio.sleep``."""
        tenacity = optional("tenacity", "an HTTP engine", "llm")
        result: T = await tenacity.AsyncRetrying(**self._kwargs())(fn)
        return result
