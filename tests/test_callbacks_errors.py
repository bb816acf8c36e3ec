"""A callback that raises stops the run with a `CallbackError`, never an item failure.

The error names the callback and the event, chains the callback's own exception, and
leaves a writer's folder committed and resumable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hypernodes_chain import (
    AsyncRunner,
    Callback,
    CallbackError,
    Event,
    Graph,
    MapFinished,
    Runner,
    interrupt,
    node,
)
from hypernodes_chain.io import StreamWriter, read_jsonl

N = 10


@node(output_name="y")
def half(x: int) -> float:
    if x == 3:
        raise ZeroDivisionError("item 3 fails")  # an item failure, collected
    return x / 2


@node(output_name="z")
def plus_one(y: float) -> float:
    return y + 1


GRAPH = Graph([half, plus_one], name="halves")


class Boom(Callback):
    """Raises ``error`` on the ``nth`` event of type ``on`` (1-based), of ``node`` if given."""

    def __init__(
        self, on: str, nth: int = 1, error: BaseException | None = None, node: str | None = None
    ) -> None:
        self.on, self.nth, self.seen, self.node = on, nth, 0, node
        self.error = error if error is not None else ValueError("boom")

    def on_event(self, event: Event) -> None:
        if type(event).__name__ == self.on and self.node in (None, getattr(event, "node", None)):
            self.seen += 1
            if self.seen == self.nth:
                raise self.error


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


def run_map(kind: str, callbacks: list[Any], **kwargs: Any) -> Any:
    inputs = {"x": list(range(N))}
    args: dict[str, Any] = {"map_over": "x", "batch_size": 3, "on_error": "collect", **kwargs}
    if kind == "async":
        return asyncio.run(AsyncRunner(callbacks=callbacks).map(GRAPH, inputs, **args))
    runner = Runner(callbacks=callbacks, max_workers=4 if kind == "pooled" else None)
    with runner:
        return runner.map(GRAPH, inputs, **args)


KINDS = ["sync", "pooled", "async"]
# the third batch's 'half': by then every runner has handed the first batch on (AsyncRunner
# keeps two batches out at once, and takes a third only once the first has left)
EVENTS = [("BatchFinished", 2, "batch start 3"), ("NodeFinished", 3, "node 'half'")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("event", "nth", "detail"), EVENTS)
def test_map_collect_stops_with_a_callback_error(
    kind: str, event: str, nth: int, detail: str
) -> None:
    boom = Boom(event, nth, node="half" if event == "NodeFinished" else None)
    with pytest.raises(CallbackError) as info:
        run_map(kind, [boom])
    message = str(info.value)
    assert message.startswith(f"callback Boom raised ValueError: boom on {event} (")
    assert detail in message
    assert "graph 'halves'" in message
    assert type(info.value.__cause__) is ValueError
    assert info.value.__cause__ is boom.error
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("event", "nth", "detail"), EVENTS)
def test_writer_folder_stays_committed_and_resumes(
    tmp_path: Path, kind: str, event: str, nth: int, detail: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(CallbackError):
        boom = Boom(event, nth, node="half" if event == "NodeFinished" else None)
        run_map(kind, [boom], writer=StreamWriter(out, max_lines_per_file=2))
    done = sorted(r["_index"] for r in read_jsonl(out))
    assert done and done == sorted(set(done))  # something was committed, nothing twice
    run_map(kind, [], writer=StreamWriter(out, max_lines_per_file=2, resume=True))
    # every item exactly once; item 3 failed, so it is in the errors, not in the data
    assert sorted(r["_index"] for r in read_jsonl(out)) == [i for i in range(N) if i != 3]


def test_callback_failing_on_map_finished_after_the_writer_committed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CallbackError, match="on MapFinished"):
        run_map("sync", [Boom("MapFinished")], writer=StreamWriter(out, max_lines_per_file=2))
    assert sorted(r["_index"] for r in read_jsonl(out)) == [i for i in range(N) if i != 3]


def test_callback_failing_on_map_started_leaves_the_folder_resumable(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CallbackError, match="on MapStarted"):
        run_map("sync", [Boom("MapStarted")], writer=StreamWriter(out, max_lines_per_file=2))
    run_map("sync", [], writer=StreamWriter(out, max_lines_per_file=2, resume=True))
    assert sorted(r["_index"] for r in read_jsonl(out)) == [i for i in range(N) if i != 3]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_run_stops_with_a_callback_error(kind: str) -> None:
    callbacks = [Boom("NodeFinished")]
    with pytest.raises(CallbackError) as info:
        if kind == "async":
            asyncio.run(AsyncRunner(callbacks=callbacks).run(GRAPH, {"x": 4}))
        else:
            Runner(callbacks=callbacks).run(GRAPH, {"x": 4})
    assert str(info.value) == (
        "callback Boom raised ValueError: boom on NodeFinished (node 'half', graph 'halves')"
    )
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("map_over", [None, "x"])
def test_iter_stops_with_a_callback_error(map_over: str | None) -> None:
    async def main() -> list[str]:
        seen = []
        kwargs: dict[str, Any] = {} if map_over is None else {"map_over": "x", "batch_size": 3}
        inputs: dict[str, Any] = {"x": 4} if map_over is None else {"x": list(range(N))}
        runner = AsyncRunner(callbacks=[Boom("NodeFinished", 2)])
        async with runner.iter(GRAPH, inputs, on_error="collect", **kwargs) as run:
            async for event in run:
                seen.append(type(event).__name__)
        return seen

    with pytest.raises(CallbackError, match="on NodeFinished") as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_callback_error_is_not_an_item_failure(kind: str) -> None:
    @node(output_name="words")
    def speak(x: int) -> Any:
        yield f"{x} "
        yield "done"

    class Chunky(Callback):
        def on_streaming_chunk_event(self, event: Event) -> None:
            raise ValueError("boom")

    inputs = {"x": [1, 2, 3]}
    with pytest.raises(CallbackError, match="on StreamingChunkEvent") as info:
        if kind == "async":
            asyncio.run(
                AsyncRunner(callbacks=[Chunky()]).map(
                    Graph([speak]), inputs, map_over="x", on_error="collect"
                )
            )
        else:
            with Runner(callbacks=[Chunky()], max_workers=4 if kind == "pooled" else None) as r:
                r.map(Graph([speak]), inputs, map_over="x", on_error="collect")
    assert isinstance(info.value.__cause__, ValueError)


def test_interrupt_callback_error_stops_a_map_with_handlers() -> None:
    @node(output_name="ok")
    def approve(x: int) -> bool:
        try:
            return bool(interrupt(x, name="approve"))
        except Exception:  # a node that swallows errors does not swallow the callback's
            return False

    runner = Runner(callbacks=[Boom("InterruptEvent", nth=2)])
    with pytest.raises(CallbackError, match=r"on InterruptEvent \(node 'approve', .*item 1\)"):
        runner.map(
            Graph([approve]), {"x": [1, 2, 3]}, map_over="x", on_error="collect",
            handlers={"approve": lambda value: True},
        )  # fmt: skip


def test_other_subscribers_still_see_the_events() -> None:
    recorder = Recorder()
    with pytest.raises(CallbackError) as info:
        run_map("sync", [Boom("BatchFinished"), recorder])
    names = [type(e).__name__ for e in recorder.events]
    assert names.count("BatchFinished") == 1  # the event the callback failed on
    last = recorder.events[-1]
    assert isinstance(last, MapFinished) and last.error is info.value


def test_a_plain_function_subscriber_is_named() -> None:
    def my_logger(event: Event) -> None:
        raise KeyError("k")

    with pytest.raises(CallbackError, match=r"^callback .*my_logger raised KeyError: 'k' on "):
        Runner(callbacks=my_logger).run(GRAPH, {"x": 1})


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_keyboard_interrupt_and_system_exit_are_not_wrapped(
    kind: str, error: BaseException
) -> None:
    run: Callable[[], Any]
    if kind == "async":

        def run() -> Any:
            return run_map("async", [Boom("NodeFinished", error=error)])

    else:

        def run() -> Any:
            return Runner(callbacks=[Boom("NodeFinished", error=error)]).run(GRAPH, {"x": 1})

    with pytest.raises(type(error)) as info:
        run()
    assert info.value is error
