"""The engine protocol is checked at the node: a reply that is not text fails its item
only, naming the engine and the prompt's place in the call; the rest of the batch goes on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from hypernodes_chain import EngineReplyError, Graph, ItemFailure, NodeError, Runner
from hypernodes_chain.engines.base import Prompt
from hypernodes_chain.llm import llm_node
from support.scripted_engine import ScriptedEngine, prompt_text


class NoneForX(ScriptedEngine):
    """Answers as ScriptedEngine, but None for a prompt that mentions "x"."""

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[Any]:
        replies = super().generate(prompts, schema=schema, **sampling)
        return [None if "x" in prompt_text(p) else r for p, r in zip(prompts, replies)]


@llm_node(engine="e", output_name="loud")
def loud(word: str) -> str:
    return f"say {word}"


GRAPH = Graph([loud])


def test_a_reply_that_is_not_text_fails_its_item_only() -> None:
    rows = Runner(engines={"e": NoneForX()}).map(
        GRAPH, {"word": ["a", "x", "b", "c"]}, map_over="word", batch_size=4, on_error="collect"
    )
    assert [r for k, r in enumerate(rows) if k != 1] == [
        {"loud": "SAY A"},
        {"loud": "SAY B"},
        {"loud": "SAY C"},
    ]
    failure = rows[1]
    assert isinstance(failure, ItemFailure) and failure.index == 1
    assert isinstance(failure.error, EngineReplyError)
    assert str(failure.error) == (
        "engine 'e' gave NoneType for prompt 1 of 4 "
        "(a reply is the text, or the exception of a prompt that failed)"
    )


def test_a_run_names_the_node_and_the_engine() -> None:
    with pytest.raises(NodeError, match="node 'loud' failed with EngineReplyError: engine 'e'"):
        Runner(engines={"e": NoneForX()}).run(GRAPH, {"word": "x"})
