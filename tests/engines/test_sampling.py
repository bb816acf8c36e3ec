"""One sampling type for every engine: the keywords of a call, checked once."""

from __future__ import annotations

import pytest

from hypernodes_chain.engines import OllamaEngine
from hypernodes_chain.engines.base import DEFAULT_MAX_TOKENS, Sampling
from hypernodes_chain.llm import llm_node


def test_the_keywords_of_a_call_become_one_sampling() -> None:
    s = Sampling.of({"max_tokens": 5, "stop": "\n", "seed": None, "num_ctx": 2048})
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == (5, 0.0, 1.0, None, ("\n",))
    assert dict(s.extra) == {"num_ctx": 2048}  # an engine's own keyword, kept for it
    assert Sampling.of({}).max_tokens == DEFAULT_MAX_TOKENS
    assert Sampling.of({"stop": ["a", "b"]}) == Sampling.of({"stop": ("a", "b")})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be a whole number >= 1, got 0"),
        ({"max_tokens": 2.5}, "max_tokens must be a whole number >= 1, got 2.5"),
        ({"max_tokens": True}, "max_tokens must be a whole number >= 1, got True"),
        ({"temperature": -0.1}, "temperature must be >= 0, got -0.1"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
        ({"stop": ["", "x"]}, "stop must be non-empty strings"),
    ],
)
def test_bad_sampling_is_a_clear_error(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sampling.of(given)


def test_every_engine_and_llm_node_share_the_default() -> None:
    @llm_node(engine="e")
    def ask(text: str) -> str:
        return text

    assert ask.sampling["max_tokens"] == DEFAULT_MAX_TOKENS
    options = OllamaEngine("m", options={"num_ctx": 8})._options({"stop": "x", "top_k": 3})
    assert options == {
        "num_ctx": 8,
        "num_predict": DEFAULT_MAX_TOKENS,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["x"],
        "top_k": 3,
    }
