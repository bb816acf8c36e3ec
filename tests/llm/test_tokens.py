"""Tokens are visible: an engine's counts reach the LLM node's events, the summary and logs.

An engine returns `Reply` strings that carry the prompt and completion tokens it counted;
the node's `NodeFinished` adds them up per call (a run's item, a map's batch), on every
runner; the console summary shows them per node with completion tokens per second, and
`JsonLogCallback` writes them with the event.
"""

from __future__ import annotations

import asyncio
import io
import json
import pickle
from typing import Any

import pytest
from rich.console import Console

from hypernodes_chain import AsyncRunner, Graph, NodeFinished, Runner, node
from hypernodes_chain.engines.base import Reply
from hypernodes_chain.jsonlog import JsonLogCallback
from hypernodes_chain.llm import llm_node
from hypernodes_chain.progress import ProgressCallback
from support.scripted_engine import CountingEngine, ScriptedEngine


@llm_node(engine="upper", output_name="loud")
def loud(word: str) -> str:
    return f"say {word}"


@node
def size(loud: str) -> int:
    return len(loud)


GRAPH = Graph([loud, size], name="tokens")
WORDS = ["ab", "cde", "f", "ghij", "k"]
PROMPT_TOKENS = 2 * len(WORDS)  # "say" and the word
COMPLETION_TOKENS = sum(len(f"SAY {w}") for w in WORDS)


def _events(runner: Runner | AsyncRunner, how: str) -> list[NodeFinished]:
    seen: list[Any] = []
    runner.callbacks.append(seen.append)
    for word in WORDS if how == "run" else [None]:
        if how == "run":
            call: Any = runner.run(GRAPH, {"word": word})
        else:
            call = runner.map(GRAPH, {"word": WORDS}, map_over="word", batch_size=2)
        if isinstance(runner, AsyncRunner):
            asyncio.run(call)
    return [e for e in seen if isinstance(e, NodeFinished) and e.node == "loud"]


@pytest.mark.parametrize("how", ["run", "map"])
@pytest.mark.parametrize("make", [Runner, AsyncRunner], ids=["Runner", "AsyncRunner"])
def test_node_events_carry_the_tokens_of_their_replies(make: Any, how: str) -> None:
    finished = _events(make(engines={"upper": CountingEngine("upper")}), how)
    assert sum(e.prompt_tokens for e in finished) == PROMPT_TOKENS
    assert sum(e.completion_tokens for e in finished) == COMPLETION_TOKENS
    if how == "map":
        assert len(finished) == 3  # one per batch of two


def test_an_engine_of_plain_strings_gives_zero_tokens() -> None:
    finished = _events(Runner(engines={"upper": ScriptedEngine("upper")}), "map")
    assert {(e.prompt_tokens, e.completion_tokens) for e in finished} == {(0, 0)}


def test_a_reply_is_a_string_that_keeps_its_counts_across_pickling() -> None:
    reply = Reply('{"a": 1}', prompt_tokens=3, completion_tokens=7)
    back = pickle.loads(pickle.dumps(reply))
    assert back == '{"a": 1}' and json.loads(back) == {"a": 1}
    assert (back.prompt_tokens, back.completion_tokens) == (3, 7)


def test_the_summary_and_the_json_log_show_tokens() -> None:
    console = Console(file=io.StringIO(), width=140, color_system=None, record=True)
    log = io.StringIO()
    runner = Runner(
        engines={"upper": CountingEngine("upper")},
        callbacks=[ProgressCallback(console, show_tree=False, enabled=True), JsonLogCallback(log)],
    )
    runner.map(GRAPH, {"word": WORDS}, map_over="word", batch_size=2)
    text = console.file.getvalue()
    assert "tokens (in + out)" in text and "out tokens/s" in text
    summary = text[text.index("tokens (in + out)") :].splitlines()  # the table, not the bars
    row = next(line for line in summary if line.strip().startswith("loud"))
    assert f"{PROMPT_TOKENS:,} + {COMPLETION_TOKENS:,}" in row
    size_row = next(line for line in summary if line.strip().startswith("size"))
    assert "+" not in size_row  # a node that calls no engine shows no tokens
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    logged = [x for x in lines if x["event"] == "NodeFinished" and x["node"] == "loud"]
    assert sum(x["prompt_tokens"] for x in logged) == PROMPT_TOKENS
    assert sum(x["completion_tokens"] for x in logged) == COMPLETION_TOKENS
