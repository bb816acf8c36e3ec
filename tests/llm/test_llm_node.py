"""LLM nodes on the real tiny Llama: one generate per batch of cache misses, validated
structured output, failures per item, cache keys, every runner, nested graphs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")
pydantic = pytest.importorskip("pydantic")

from hypernodes_chain import (  # noqa: E402
    AsyncRunner,
    Graph,
    ItemFailure,
    LLMOutputError,
    MemoryCache,
    NodeError,
    Runner,
    StreamingChunkEvent,
    node,
)
from hypernodes_chain.engines import EngineBroker, TransformersEngine  # noqa: E402
from hypernodes_chain.io import StreamWriter  # noqa: E402
from hypernodes_chain.llm import LLMNode, llm_node  # noqa: E402


class Summary(pydantic.BaseModel):
    title: str = pydantic.Field(max_length=10)
    sentiment: Literal["positive", "negative", "neutral"]


class WordySummary(Summary):
    """Valid JSON is not enough: a rule the grammar cannot know fails some items."""

    @pydantic.field_validator("title")
    @classmethod
    def no_digits(cls, value: str) -> str:
        if any(c.isdigit() for c in value):
            raise ValueError("the title must not contain digits")
        return value


class Counting(TransformersEngine):
    """The real engine, counting its generate calls and their sizes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def generate(self, prompts: Any, **kwargs: Any) -> list[Any]:
        self.calls.append(len(prompts))
        return super().generate(prompts, **kwargs)


@node(output_name="cleaned")
def clean(review: str) -> str:
    return review.strip().lower()


def summarize_node(model: type = Summary, **kwargs: Any) -> LLMNode:
    @llm_node(engine="small", output_name="summary", output_model=model, max_tokens=48, **kwargs)
    def summarize(cleaned: str) -> str:
        return f"Summarize as JSON: {cleaned}"

    return summarize


REVIEWS = [
    f"  Review {i}: the food was {w} ."
    for i, w in enumerate(["good", "bad", "fine", "great", "ok"] * 2)
]


@pytest.fixture
def engine(tiny_llama: Path) -> Counting:
    return Counting(tiny_llama)


def test_map_makes_one_generate_per_batch_of_cache_misses(engine: Counting) -> None:
    graph = Graph([clean, summarize_node()])
    runner = Runner(engines={"small": engine}, cache=MemoryCache())
    out = runner.map(graph, {"review": REVIEWS}, map_over="review", batch_size=4)
    # the batches are at the engine at once (in whichever order they reach it)
    assert sorted(engine.calls) == [2, 4, 4]
    assert all(isinstance(row["summary"], Summary) for row in out)
    again = runner.map(graph, {"review": REVIEWS}, map_over="review", batch_size=4)
    assert len(engine.calls) == 3  # every item came from the cache: no model call
    assert again == out
    hotter = Graph([clean, summarize_node(temperature=0.7, seed=1)])
    runner.map(hotter, {"review": REVIEWS[:3]}, map_over="review")
    assert engine.calls[3:] == [3]  # other sampling: other keys


def test_another_model_is_another_key(tiny_llama: Path, build_llama: Any, tmp_path: Path) -> None:
    cache = MemoryCache()
    graph = Graph([clean, summarize_node()])
    first = Counting(tiny_llama)
    Runner(engines={"small": first}, cache=cache).map(
        graph, {"review": REVIEWS[:2]}, map_over="review"
    )
    other = Counting(build_llama(tmp_path / "other", seed=7))
    Runner(engines={"small": other}, cache=cache).map(
        graph, {"review": REVIEWS[:2]}, map_over="review"
    )
    assert first.calls == [2] and other.calls == [2]
    same = Counting(tiny_llama)
    Runner(engines={"small": same}, cache=cache).map(
        graph, {"review": REVIEWS[:2]}, map_over="review"
    )
    assert same.calls == []  # same model, same identity: cached


def test_a_reply_that_does_not_validate_fails_only_its_item(
    engine: Counting, tmp_path: Path
) -> None:
    graph = Graph([clean, summarize_node(WordySummary, parse_retries=1)])
    runner = Runner(engines={"small": engine})
    result = runner.map(graph, {"review": REVIEWS}, map_over="review", on_error="collect",
                        writer=StreamWriter(tmp_path / "out", format="parquet"))  # fmt: skip
    bad = [f for f in result.failures if isinstance(f.error, LLMOutputError)]
    assert bad and result.n_ok == len(REVIEWS) - len(bad) > 0
    assert engine.calls[0] == len(REVIEWS) and engine.calls[1] == len(bad)  # one retry round
    for failure in bad:
        assert failure.node == "summarize"
        title = json.loads(failure.error.raw)["title"]  # valid JSON, but digits in the title
        assert any(c.isdigit() for c in title)
    records = [
        json.loads(line) for line in (tmp_path / "out/_errors/000.jsonl").read_text().splitlines()
    ]
    assert {r["_index"] for r in records} == {f.index for f in bad}
    assert all("raw_reply" in r and r["error_type"] == "LLMOutputError" for r in records)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out")
    assert {"summary.title", "summary.sentiment"} <= set(table.column_names)
    titles = table.column("summary.title").to_pylist()
    assert len(titles) == result.n_ok and not any(c.isdigit() for t in titles for c in t)


def test_every_runner_gives_the_same_replies(engine: Counting) -> None:
    graph = Graph([clean, summarize_node()])
    broker = EngineBroker({"small": engine})
    sync = Runner(engines=broker).map(graph, {"review": REVIEWS}, map_over="review", batch_size=3)
    runner = AsyncRunner(engines=broker)
    amap = asyncio.run(runner.map(graph, {"review": REVIEWS}, map_over="review", batch_size=3))
    assert amap == sync
    with Runner(engines=broker, max_workers=4) as pooled:
        assert pooled.map(graph, {"review": REVIEWS}, map_over="review", batch_size=3) == sync
    one = Runner(engines=broker).run(graph, {"review": REVIEWS[4]})
    assert one["summary"] == sync[4]["summary"]
    assert asyncio.run(runner.run(graph, {"review": REVIEWS[4]})) == one


def test_iter_streams_the_tokens_of_a_text_reply(tiny_llama: Path) -> None:
    @llm_node(engine="small", output_name="reply", max_tokens=12)
    def answer(cleaned: str) -> str:
        return f"Say something about {cleaned}"

    graph = Graph([clean, answer])
    engines = {"small": TransformersEngine(tiny_llama)}
    expected = Runner(engines=engines).run(graph, {"review": REVIEWS[0]})["reply"]

    async def main() -> tuple[list[str], Any]:
        chunks = []
        async with AsyncRunner(engines=engines).iter(graph, {"review": REVIEWS[0]}) as run:
            async for event in run:
                if isinstance(event, StreamingChunkEvent):
                    assert event.node == "answer"
                    chunks.append(event.chunk)
        return chunks, run.result

    chunks, result = asyncio.run(main())
    assert len(chunks) > 1 and "".join(chunks) == result["reply"] == expected


def test_a_nested_graph_uses_the_outer_runners_engines(engine: Counting) -> None:
    inner = Graph([summarize_node()], name="inner")
    outer = Graph([clean, inner.as_node(name="summarized")])
    out = Runner(engines={"small": engine}).map(outer, {"review": REVIEWS[:3]}, map_over="review")
    assert all(isinstance(row["summary"], Summary) for row in out)


def test_no_engine_is_a_clear_error() -> None:
    graph = Graph([clean, summarize_node()])
    with pytest.raises(NodeError, match="needs engine 'small', but the runner has no engines"):
        Runner().run(graph, {"review": "x"})
    out = Runner().map(graph, {"review": ["x"]}, map_over="review", on_error="collect")
    assert isinstance(out[0], ItemFailure) and isinstance(out[0].error, LookupError)


def test_llm_node_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="engine= must name"):
        llm_node(engine="")(lambda x: x)
    with pytest.raises(TypeError, match="output_model must be a pydantic model"):
        llm_node(engine="e", output_model=dict)(lambda x: x)


def test_the_output_type_is_the_model_for_graph_checks() -> None:
    @node(output_name="n")
    def title_length(summary: Summary) -> int:
        return len(summary.title)

    Graph([clean, summarize_node(), title_length])  # no clash: the value is a Summary
    with pytest.raises(TypeError, match="returns Summary but node 'wants_int' expects int"):

        @node(output_name="m")
        def wants_int(summary: int) -> int:
            return summary

        Graph([clean, summarize_node(), wants_int])


def two_engine_graph() -> Graph:
    @llm_node(engine="first", output_name="draft", max_tokens=4)
    def draft(cleaned: str) -> str:
        return f"Draft: {cleaned}"

    @node(output_name="checked")
    def checked(draft: str, cleaned: str) -> str:
        if cleaned.startswith("review 3:"):
            raise ValueError("review 3 is rejected between the two models")
        return f"{cleaned[:9]}|{draft}"

    @llm_node(engine="second", output_name="final", max_tokens=4)
    def final(checked: str) -> str:
        return f"Polish: {checked}"

    return Graph([clean, draft, checked, final])


@pytest.mark.parametrize("runner_kind", ["sync", "async"])
def test_two_engines_that_do_not_fit_run_one_segment_after_the_other(
    tiny_llama: Path, build_llama: Any, tmp_path: Path, runner_kind: str
) -> None:
    second = build_llama(tmp_path / "second", seed=3)
    reviews = [f"Review {i}: fine" for i in range(23)]

    def run(max_live: int, window: int, writer: Any = None) -> Any:
        broker = EngineBroker(
            {"first": TransformersEngine(tiny_llama), "second": TransformersEngine(second)},
            max_live=max_live,
        )
        kwargs = dict(map_over="review", batch_size=4, on_error="collect", engine_window=window)
        if writer is not None:
            kwargs["writer"] = writer
        inputs = {"review": iter(reviews)}  # a generator: read once, spilled per window
        if runner_kind == "async":
            out = asyncio.run(AsyncRunner(engines=broker).map(two_engine_graph(), inputs, **kwargs))
        else:
            out = Runner(engines=broker).map(two_engine_graph(), inputs, **kwargs)
        return out, broker.status()

    both, status = run(max_live=2, window=100_000)
    assert status["first"]["starts"] == status["second"]["starts"] == 1
    split, status = run(max_live=1, window=10)
    assert status["first"]["starts"] == status["second"]["starts"] == 3  # ceil(23 / 10)

    def plain(rows: list[Any]) -> list[Any]:
        return [(r.index, r.node) if isinstance(r, ItemFailure) else r for r in rows]

    assert plain(split) == plain(both)
    assert plain(split)[3] == (3, "checked") and split[3].inputs == {"review": reviews[3]}
    result, status = run(max_live=1, window=8, writer=StreamWriter(tmp_path / "out"))
    assert status["first"]["starts"] == 3 and (result.n_ok, result.n_failed) == (22, 1)
    rows = [json.loads(line) for line in (tmp_path / "out/000.jsonl").read_text().splitlines()]
    assert [r["_index"] for r in rows] == [i for i in range(23) if i != 3]
    assert [r["final"] for r in rows] == [
        r["final"] for r in both if not isinstance(r, ItemFailure)
    ]
    again, status = run(max_live=1, window=8, writer=StreamWriter(tmp_path / "out", resume=True))
    assert (again.n_skipped, again.n_items, again.n_failed) == (22, 1, 1)  # item 3 retried
    assert status["first"]["starts"] == 1  # one window: only item 3


def test_engine_starts_show_on_the_runs_bus(
    tiny_llama: Path, build_llama: Any, tmp_path: Path
) -> None:
    from hypernodes_chain.events import EngineStarted, EngineStopped

    seen: list[Any] = []
    broker = EngineBroker(
        {"first": TransformersEngine(tiny_llama),
         "second": TransformersEngine(build_llama(tmp_path / "b", seed=5))},
        max_live=1,
    )  # fmt: skip
    Runner(engines=broker, callbacks=[seen.append]).map(
        two_engine_graph(), {"review": REVIEWS[:2]}, map_over="review", on_error="collect"
    )
    names = [
        (type(e).__name__, e.name) for e in seen if isinstance(e, (EngineStarted, EngineStopped))
    ]
    assert names == [
        ("EngineStarted", "first"),
        ("EngineStopped", "first"),
        ("EngineStarted", "second"),
    ]
    broker.close()
    assert not any(s["live"] for s in broker.status().values())


def test_a_segmented_map_is_cached_like_any_other(
    tiny_llama: Path, build_llama: Any, tmp_path: Path
) -> None:
    first, second = Counting(tiny_llama), Counting(build_llama(tmp_path / "s", seed=4))
    cache = MemoryCache()
    reviews = [f"Review {i}: fine" for i in range(9)]

    def run(max_live: int) -> Any:
        broker = EngineBroker({"first": first, "second": second}, max_live=max_live)
        runner = Runner(engines=broker, cache=cache)
        return runner.map(two_engine_graph(), {"review": reviews}, map_over="review",
                          batch_size=4, engine_window=5, on_error="collect")  # fmt: skip

    def plain(rows: list[Any]) -> list[Any]:
        return [(r.index, r.node) if isinstance(r, ItemFailure) else r for r in rows]

    split = plain(run(max_live=1))
    calls = (list(first.calls), list(second.calls))
    assert sum(calls[0]) == 9 and sum(calls[1]) == 8  # item 3 fails between the models
    assert plain(run(max_live=1)) == split and (first.calls, second.calls) == calls  # cached
    assert plain(run(max_live=2)) == split and (first.calls, second.calls) == calls  # same keys
