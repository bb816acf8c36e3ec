"""What cannot travel between the driver and where the work runs (a Dask worker, a Daft
UDF process), and what is done about it.

- `why` / `cannot`: whether a value pickles, and the clear error that names it (node,
  input, item) and where it was to go.
- `pack_error` / `unpack_error`: an exception as data, its cause kept; one that does not
  pickle travels as `RemoteError` (`portable_error`, for events and failure records too).
- `fail_unsent` / `fail_unsent_call`: a value a node made that does not pickle back fails
  its item, as if the node had raised (an `ItemFailure` naming node and item, the value
  left behind), instead of the whole batch or call; under ``on_error="raise"`` the node's
  error is raised. It is never retried: it would recur.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from typing import Any, TypeAlias, cast

from .._optional import optional
from ..events import Event, NodeFailed
from ..exceptions import RemoteError
from ..plan import Plan
from ..results import ItemFailure
from ._keys import node_error
from ._work import ColumnCall, ItemCall

__all__ = [
    "DRIVER",
    "WORKERS",
    "Reply",
    "cannot",
    "cloudpickle",
    "fail_unsent",
    "fail_unsent_call",
    "pack_error",
    "portable_error",
    "portable_event",
    "portable_reply",
    "unpack_error",
    "why",
]

Reply: TypeAlias = tuple[
    dict[str, list[object]],  # output columns
    dict[str, object],  # constants the batch made
    dict[str, list["str | None"]],  # cache keys of the columns
    dict[int, "ItemFailure"],  # failures by position
    list[Event],
    float,  # cache seconds
]
"""What a batch sends back: output columns, the constants it made, keys, failures, events,
seconds spent on the cache."""

WORKERS = "the Dask workers"
DRIVER = "the driver"


def cloudpickle() -> Any:
    """The cloudpickle module (extra ``dask``)."""
    return optional("cloudpickle", "DaskRunner", "dask")


def why(obj: object) -> BaseException | None:
    """The error that pickling ``obj`` raises, or None where it pickles."""
    try:
        cloudpickle().dumps(obj)
    except Exception as exc:
        return exc
    return None


def cannot(what: str, exc: BaseException, to: str = WORKERS) -> TypeError:
    """The error that says ``what`` cannot be pickled to go ``to``, chained to ``exc``."""
    error = TypeError(f"{what} cannot be pickled to send it to {to}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def fail_unsent(
    state: Reply, plan: Plan, indices: list[int], raise_errors: bool, listen: bool
) -> Reply:
    """``state`` with each item whose output value does not pickle failed, as if its node
    had raised: an `ItemFailure` naming node and item (the value dropped), a `NodeFailed`
    per node among the events; under ``on_error="raise"`` the node's error is raised."""
    columns, made, keys, failures, events, cache_seconds = state
    path = (plan.graph.name,)
    producers = {out: step for step in plan.steps for out in step.node.outputs}
    failed: dict[str, list[ItemFailure]] = {}  # node -> the items it failed here
    gone: dict[str, set[int]] = {}  # output -> the positions whose value stays here
    for name, pos, cause in _unpicklable(columns, made, len(indices)):
        index, step = indices[pos], producers.get(name)
        node = name if step is None else step.node.name
        what = f"output {name!r} of node {node!r} for item {index}"
        error = cannot(what, cause, DRIVER)
        if raise_errors:
            if step is None:
                raise error
            raise node_error(step, error, index, path) from error
        gone.setdefault(name, set()).add(pos)
        if pos not in failures:  # the first node that failed the item tells its story
            failures[pos] = ItemFailure.from_exception(index, node, error, path)
            failed.setdefault(node, []).append(failures[pos])
    made = {k: v for k, v in made.items() if k not in gone}
    columns = {k: _without(col, gone[k]) if k in gone else col for k, col in columns.items()}
    if listen:
        for node, records in failed.items():
            first = records[0]
            events.append(NodeFailed(path=path, node=node, error=first.error,
                                     index=first.index, n_items=len(records)))  # fmt: skip
    return columns, made, keys, failures, events, cache_seconds


def _without(column: list[object], positions: set[int]) -> list[object]:
    return [None if pos in positions else value for pos, value in enumerate(column)]


def _unpicklable(
    columns: dict[str, list[object]], made: dict[str, object], n: int
) -> Iterator[tuple[str, int, BaseException]]:
    """``(output, batch position, pickling error)`` for each value that does not pickle
    (a constant the batch made: at every position)."""
    for name, value in made.items():
        cause = why(value)
        if cause is not None:
            for pos in range(n):
                yield name, pos, cause
    for name, column in columns.items():
        if why(column) is None:
            continue
        for pos, value in enumerate(column):
            cause = why(value)
            if cause is not None:
                yield name, pos, cause


def fail_unsent_call(call: ItemCall | ColumnCall) -> None:
    """Fail the call (a column: each row) whose value does not pickle, as if the node had
    raised; the value stays here."""
    name = call.step.node.name
    match call:
        case ItemCall() if call.error is None:
            cause = why(call.result)
            if cause is not None:
                where = "" if call.index is None else f" for item {call.index}"
                call.error = cannot(f"the value of node {name!r}{where}", cause, DRIVER)
                call.result = None
        case ColumnCall():
            for row, value in enumerate(call.results):
                cause = None if row in call.failed else why(value)
                if cause is not None:
                    what = f"the value of node {name!r} for item {call.indices[row]}"
                    call.failed[row] = cannot(what, cause, DRIVER)
                    call.results[row] = None


def portable_error(error: BaseException) -> BaseException:
    """``error``, or a `RemoteError` with its type, message and traceback where it does
    not pickle."""
    if why(error) is None:
        return error
    import traceback

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return RemoteError(f"{type(error).__qualname__}: {error}\n{text}")


def portable_reply(state: Reply) -> Reply:
    """``state`` with the errors of its failures and events made portable."""
    columns, made, keys, failures, events, cache_seconds = state
    failures = {
        pos: dataclasses.replace(f, error=portable_error(f.error)) for pos, f in failures.items()
    }
    events = [portable_event(e) for e in events]
    return columns, made, keys, failures, events, cache_seconds


def portable_event(event: Event) -> Event:
    """``event`` with its error (if any) made portable."""
    error = getattr(event, "error", None)
    if error is None:
        return event
    return dataclasses.replace(event, error=portable_error(error))  # type: ignore[call-arg]


def pack_error(error: BaseException) -> bytes:
    """An exception and its ``__cause__`` as bytes (pickling keeps neither the cause nor
    the traceback); one that does not pickle travels as `RemoteError`."""
    cause = error.__cause__
    state = (portable_error(error), None if cause is None else portable_error(cause))
    return bytes(cloudpickle().dumps(state))


def unpack_error(blob: bytes | memoryview) -> BaseException:
    """The exception `pack_error` packed, its cause chained again."""
    error, cause = pickle.loads(blob)
    if cause is not None:
        error.__cause__ = cause
    return cast(BaseException, error)
