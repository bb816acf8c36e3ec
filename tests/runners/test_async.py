"""AsyncRunner: concurrency, streaming with iter(), cancellation, interrupts."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings

import pytest

from hypernodes_chain import (
    AsyncRunner,
    DiskCache,
    Graph,
    GraphFinished,
    InterruptError,
    InterruptEvent,
    NodeFinished,
    NodeStarted,
    Runner,
    StreamingChunkEvent,
    ainterrupt,
    interrupt,
    node,
)


def test_map_concurrency_never_exceeds_limit():
    state = {"now": 0, "peak": 0}

    @node
    async def work(x: int) -> int:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        return x

    out = asyncio.run(
        AsyncRunner(max_concurrency=7).map(Graph([work]), {"x": list(range(60))}, map_over="x")
    )
    assert [r["work"] for r in out] == list(range(60))
    assert state["peak"] == 7


def test_concurrency_counted_across_nested_graphs():
    state = {"now": 0, "peak": 0}

    @node
    async def leaf(x: int) -> int:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.005)
        state["now"] -= 1
        return x

    inner = Graph([leaf], name="inner").as_node(
        name="sub", map_over="xs", input_mapping={"xs": "x"}
    )
    graph = Graph([inner])
    asyncio.run(
        AsyncRunner(max_concurrency=5).map(graph, {"xs": [list(range(10))] * 6}, map_over="xs")
    )
    assert state["peak"] == 5


def test_two_hundred_sleeps_are_far_faster_than_serial():
    @node
    async def nap(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    t0 = time.perf_counter()
    out = asyncio.run(
        AsyncRunner(max_concurrency=200).map(Graph([nap]), {"x": list(range(200))}, map_over="x")
    )
    elapsed = time.perf_counter() - t0
    assert len(out) == 200
    assert elapsed < 2.0  # serial would take 10 s


def test_independent_nodes_overlap_in_run():
    left_started = threading.Event()
    right_started = threading.Event()

    @node
    async def left(x: int) -> int:
        left_started.set()
        for _ in range(500):  # waits for `right`, which can only start if they overlap
            if right_started.is_set():
                return x
            await asyncio.sleep(0.01)
        raise AssertionError("right never started while left was running")

    @node
    def right(x: int) -> int:  # sync: runs in a worker thread
        right_started.set()
        assert left_started.wait(5), "left never started while right was running"
        return x

    @node
    def both(left: int, right: int) -> int:
        return left + right

    assert asyncio.run(AsyncRunner().run(Graph([left, right, both]), {"x": 1}))["both"] == 2


def test_sync_nodes_do_not_block_the_loop():
    ticked = threading.Event()

    @node
    def blocking(x: int) -> int:
        # only returns once the event loop has ticked while this node was running
        assert ticked.wait(5), "the event loop was blocked by a sync node"
        return x

    async def main():
        async def ticker():
            for _ in range(5):
                await asyncio.sleep(0.001)
            ticked.set()

        await asyncio.gather(AsyncRunner().run(Graph([blocking]), {"x": 1}), ticker())

    asyncio.run(main())
    assert ticked.is_set()


def test_batch_nodes_get_whole_batches():
    seen = []

    @node(output_name="emb", batch=True)
    async def embed(text: list[str]) -> list[int]:
        seen.append(len(text))
        return [len(t) for t in text]

    asyncio.run(
        AsyncRunner().map(Graph([embed]), {"text": ["a"] * 10}, map_over="text", batch_size=4)
    )
    assert seen == [4, 4, 2]


def test_works_inside_a_running_loop_with_plain_await():
    @node
    def inc(x: int) -> int:
        return x + 1

    async def notebook_cell():
        return await AsyncRunner().run(Graph([inc]), {"x": 1})

    assert asyncio.run(notebook_cell()) == {"inc": 2}


def test_sync_runner_inside_running_loop_works():
    @node
    async def ainc(x: int) -> int:
        return x + 1

    @node
    def double(ainc: int) -> int:
        return ainc * 2

    async def notebook_cell():
        return Runner().run(Graph([ainc, double]), {"x": 1}), Runner().map(
            Graph([ainc, double]), {"x": [1, 2]}, map_over="x"
        )

    single, many = asyncio.run(notebook_cell())
    assert single == {"ainc": 2, "double": 4}
    assert many == [{"ainc": 2, "double": 4}, {"ainc": 3, "double": 6}]


# -- iter: events and streaming ------------------------------------------------------


def test_iter_yields_events_in_order_and_result():
    @node
    def a(x: int) -> int:
        return x + 1

    @node
    def b(a: int) -> int:
        return a * 2

    async def main():
        async with AsyncRunner().iter(Graph([a, b], name="g"), {"x": 1}) as run:
            events = [e async for e in run]
        return events, run.result

    events, result = asyncio.run(main())
    assert result == {"a": 2, "b": 4}
    assert [type(e).__name__ + ":" + str(getattr(e, "node", "")) for e in events] == [
        "GraphStarted:",
        "NodeStarted:a",
        "NodeFinished:a",
        "NodeStarted:b",
        "NodeFinished:b",
        "GraphFinished:",
    ]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_iter_streams_chunks_before_the_node_finishes(kind):
    gate = threading.Event()

    if kind == "async":

        @node
        async def speak(prompt: str):
            for word in prompt.split():
                yield word + " "
                await asyncio.sleep(0.01)
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 5)
            yield "!"
    else:

        @node
        def speak(prompt: str):
            for word in prompt.split():
                yield word + " "
            gate.wait(5)
            yield "!"

    async def main():
        chunks = []
        async with AsyncRunner().iter(Graph([speak]), {"prompt": "hello big world"}) as run:
            async for event in run:
                if isinstance(event, StreamingChunkEvent):
                    chunks.append(event.chunk)
                    if len(chunks) == 3:
                        gate.set()  # the node is still running: it waits for this
                if isinstance(event, NodeFinished):
                    assert gate.is_set()
        return chunks, run.result

    chunks, result = asyncio.run(main())
    assert chunks == ["hello ", "big ", "world ", "!"]
    assert result == {"speak": "hello big world !"}


def test_leaving_iter_early_cancels_cleanly():
    started = []
    cancelled = []

    @node
    async def forever(x: int) -> int:
        started.append(x)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main():
        async with AsyncRunner().iter(Graph([forever]), {"x": list(range(5))}, map_over="x") as run:
            async for event in run:
                if isinstance(event, NodeStarted):
                    break
        await asyncio.sleep(0.05)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        left = asyncio.run(main())
        gc.collect()
    assert left == []
    assert sorted(cancelled) == sorted(started) and started


def test_iter_reraises_a_node_error_after_events():
    @node
    def boom(x: int) -> int:
        raise ValueError("nope")

    async def main():
        seen = []
        async with AsyncRunner().iter(Graph([boom]), {"x": 1}) as run:
            with pytest.raises(Exception, match="node 'boom' failed with ValueError: nope"):
                async for event in run:
                    seen.append(type(event).__name__)
        return seen

    assert asyncio.run(main())[-2:] == ["NodeFailed", "GraphFinished"]


# -- interrupts ---------------------------------------------------------------------


def test_async_handler_answers_sync_and_async_nodes():
    @node
    def sync_ask(x: int) -> str:
        return interrupt(f"approve {x}?", name="approve")

    @node
    async def async_ask(x: int) -> str:
        return await ainterrupt(x, name="double")

    async def approve(value):
        await asyncio.sleep(0)
        return value.upper()

    out = asyncio.run(
        AsyncRunner().run(
            Graph([sync_ask, async_ask]),
            {"x": 2},
            handlers={"approve": approve, "double": lambda v: v * 2},
        )
    )
    assert out == {"sync_ask": "APPROVE 2?", "async_ask": 4}


def test_sync_runner_accepts_async_handler():
    @node
    def ask(x: int) -> int:
        return interrupt(x, name="q")

    async def answer(v):
        return v + 100

    assert Runner().run(Graph([ask]), {"x": 1}, handlers={"q": answer}) == {"ask": 101}


def test_no_handler_is_interrupt_error_naming_interrupt_and_node():
    @node
    def ask(x: int) -> int:
        return interrupt(x, name="approve")

    with pytest.raises(InterruptError, match=r"interrupt 'approve' has no handler.*in node 'ask'"):
        Runner().run(Graph([ask]), {"x": 1})
    with pytest.raises(
        InterruptError, match=r"interrupt 'approve' has no handler.*in node 'ask' for item 0"
    ):
        asyncio.run(AsyncRunner().map(Graph([ask]), {"x": [1]}, map_over="x"))
    with pytest.raises(InterruptError, match=r"interrupt 'approve' has no handler"):
        Runner().run(Graph([ask]), {"x": 1}, handlers={"other": print})  # a handler, not this one


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_iter_interrupt_answered_with_respond(kind):
    if kind == "sync":

        @node
        def review(draft: str) -> str:
            return draft + (" [ok]" if interrupt(draft, name="approve") else " [rejected]")
    else:

        @node
        async def review(draft: str) -> str:
            return draft + (" [ok]" if await ainterrupt(draft, name="approve") else " [rejected]")

    async def main():
        async with AsyncRunner().iter(Graph([review]), {"draft": "text"}) as run:
            async for event in run:
                if isinstance(event, InterruptEvent):
                    assert (event.name, event.value, event.node) == ("approve", "text", "review")
                    run.respond(True)
        return run.result

    assert asyncio.run(main()) == {"review": "text [ok]"}


def test_several_pending_interrupts_answered_by_id():
    @node
    async def ask(x: int) -> int:
        return await ainterrupt(x, name="scale")

    async def main():
        events = []
        async with AsyncRunner().iter(Graph([ask]), {"x": [1, 2, 3]}, map_over="x") as run:
            async for event in run:
                if isinstance(event, InterruptEvent):
                    events.append(event)
                    if len(events) == 3:
                        with pytest.raises(
                            InterruptError, match=r"3 interrupts are waiting.*pass id="
                        ):
                            run.respond(0)
                        with pytest.raises(InterruptError, match="no interrupt 'nope' is waiting"):
                            run.respond(0, id="nope")
                        for e in reversed(events):
                            run.respond(e.value * 10, id=e.id)
        return events, run.result

    events, result = asyncio.run(main())
    assert sorted(e.index for e in events) == [0, 1, 2]
    assert result == [{"ask": 10}, {"ask": 20}, {"ask": 30}]


def test_respond_with_nothing_waiting_is_an_error():
    @node
    def inc(x: int) -> int:
        return x + 1

    async def main():
        async with AsyncRunner().iter(Graph([inc]), {"x": 1}) as run:
            with pytest.raises(InterruptError, match="no interrupt is waiting"):
                run.respond(1)
            async for _ in run:
                pass

    asyncio.run(main())


def test_concurrent_misses_of_one_key_never_corrupt(tmp_path):
    calls = []

    @node
    async def slow_square(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.01)
        return x * x

    graph = Graph([slow_square])
    cache = DiskCache(tmp_path / "c")

    async def main():
        return await asyncio.gather(
            *(AsyncRunner(cache=cache).run(graph, {"x": 4}) for _ in range(8))
        )

    assert asyncio.run(main()) == [{"slow_square": 16}] * 8
    assert 1 <= len(calls) <= 8
    assert asyncio.run(AsyncRunner(cache=cache).run(graph, {"x": 4})) == {"slow_square": 16}
    before = len(calls)
    Runner(cache=cache).run(graph, {"x": 4})
    assert len(calls) == before


def test_graph_finished_is_last_event_for_map_in_iter():
    @node
    def inc(x: int) -> int:
        return x + 1

    async def main():
        async with AsyncRunner().iter(Graph([inc]), {"x": [1, 2]}, map_over="x") as run:
            events = [e async for e in run]
        return events, run.result

    events, result = asyncio.run(main())
    assert type(events[0]).__name__ == "MapStarted" and type(events[-1]).__name__ == "MapFinished"
    assert result == [{"inc": 2}, {"inc": 3}]
    assert not any(isinstance(e, GraphFinished) for e in events)
