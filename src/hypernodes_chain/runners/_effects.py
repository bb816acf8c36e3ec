"""The effects an invoker's body yields, and the driver resolves.

An invoker's body (``_invoke``) is a generator that yields one of these and receives its
result, so the same body runs under every driver (the httpx ``auth_flow`` idea one level
below the flows):

- `Blocking(fn, *args)`: call ``fn``; the sync driver calls it here, the async driver in
  a worker thread;
- `Awaiting(make)`: await the coroutine ``make()``; the sync driver runs it on this
  thread's loop, the async driver awaits it (holding a concurrency slot);
- `Rows(fn, n)`: ``fn(start, stop) -> (values, failed)`` over rows; a driver may cut the
  range into pieces for threads (the async driver runs quick rows on the loop itself);
- `AwaitRows(make, n)`: ``make(i)`` is row i's coroutine; run with as many workers as the
  driver allows, each holding a slot;
- `Either(fn, args, make)`: ``fn(*args)`` under the sync driver, ``await make()`` under the
  async one (an engine's ``generate`` and ``agenerate``);
- `Nested(flow)`: drive the flow ``flow()`` (a nested graph) with this driver;
- `Each(bodies)`: run several bodies (one per row); each outcome comes back as its value
  or a `Failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeAlias

__all__ = [
    "AwaitRows",
    "Awaiting",
    "Blocking",
    "Body",
    "Coro",
    "Each",
    "Effect",
    "Either",
    "Failed",
    "Nested",
    "Outcome",
    "Rows",
    "RowsFn",
    "await_rows",
]

Outcome: TypeAlias = tuple[list[Any], dict[int, BaseException]]
"""A column's result: one value per row, and the failed rows' exceptions by position."""

RowsFn: TypeAlias = Callable[[int, int], Outcome]
Coro: TypeAlias = Coroutine[object, object, Any]
# a nested flow's factory: ``_work.FlowFactory``, which is typed over the work that this
# module's effects are part of (the flow's messages are checked where the flow is made)
AnyFlow: TypeAlias = Callable[[], Generator[Any, Any, object]]


class Failed:
    """Stands for a raised exception among the outcomes of `Each`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Blocking:
    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], *args: object) -> None:
        self.fn, self.args = fn, args


class Awaiting:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Coro]) -> None:
        self.make = make


class Either:
    """Call ``fn(*args)`` under the sync driver, await ``make()`` under the async one: for
    work with a native twin of each kind (an engine's ``generate`` / ``agenerate``)."""

    __slots__ = ("args", "fn", "make")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[object, ...], make: Callable[[], Coro]
    ) -> None:
        self.fn, self.args, self.make = fn, args, make


class Rows:
    __slots__ = ("fn", "inline", "key", "n")

    def __init__(self, fn: RowsFn, n: int, inline: bool = True, key: object = None) -> None:
        self.fn, self.n = fn, n
        self.inline = inline  # may run on an event loop's own thread (no interrupt waits)
        self.key = key  # the same for every column of one node: a driver may learn its speed


class AwaitRows:
    __slots__ = ("make", "n")

    def __init__(self, make: Callable[[int], Coro], n: int) -> None:
        self.make, self.n = make, n


class Nested:
    __slots__ = ("flow",)

    def __init__(self, flow: AnyFlow) -> None:
        self.flow = flow


class Each:
    __slots__ = ("bodies",)

    def __init__(self, bodies: list[Body]) -> None:
        self.bodies = bodies


Effect: TypeAlias = "Blocking | Awaiting | Either | Rows | AwaitRows | Nested | Each"
# What an effect resolves to depends on the effect (a value, an `Outcome`, a list of
# outcomes), hence the send type.
Body: TypeAlias = Generator[Effect, Any, Any]


async def await_rows(
    make: Callable[[int], Coro],
    n: int,
    workers: int,
    slot: Callable[[], contextlib.AbstractAsyncContextManager[object]] | None = None,
) -> Outcome:
    """Row coroutines with at most ``workers`` in flight: the body of `AwaitRows`, shared
    by both drivers (the sync one passes ``workers=1``). Each worker holds one ``slot``."""
    values: list[Any] = [None] * n
    failed: dict[int, BaseException] = {}
    todo = iter(range(n))

    async def worker() -> None:
        async with slot() if slot is not None else contextlib.nullcontext():
            for i in todo:
                try:
                    values[i] = await make(i)
                except Exception as exc:
                    failed[i] = exc

    count = max(1, min(n, workers))
    if count == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(count)))
    return values, failed
