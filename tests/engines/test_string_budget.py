"""`fit_strings`: open strings get a maxLength that lets every reply close within max_tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from hypernodes_chain.engines._string_budget import fit_strings


class Summary(BaseModel):
    title: str
    sentiment: Literal["positive", "negative", "neutral"]


def test_an_open_string_gets_what_the_rest_leaves() -> None:
    schema = Summary.model_json_schema()
    fitted = fit_strings(schema, 128)
    # {"title": "", "sentiment": "positive"} is 38 bytes; 90 left at 4 bytes a character
    assert fitted["properties"]["title"]["maxLength"] == 22
    assert fitted["properties"]["sentiment"] == schema["properties"]["sentiment"]
    assert "maxLength" not in schema["properties"]["title"]  # the input is left alone


def test_bounded_and_patterned_strings_stay_as_they_are() -> None:
    class Fixed(BaseModel):
        code: str = Field(max_length=5)
        day: str = Field(pattern=r"^\d{4}$")

    schema = Fixed.model_json_schema()
    assert fit_strings(schema, 64) == schema


def test_open_strings_share_the_budget_by_their_uses() -> None:
    class Tag(BaseModel):
        name: str

    class Post(BaseModel):
        title: str
        tags: list[Tag] = Field(max_length=3)
        note: str | None

    fitted = fit_strings(Post.model_json_schema(), 400)
    # 1 title + 3 tag names + 1 note: 5 uses of open strings
    fixed = len('{"title": "", "tags": [{"name": ""}, {"name": ""}, {"name": ""}], "note": ""}')
    share = (400 - fixed) // (4 * 5)
    assert fitted["properties"]["title"]["maxLength"] == share
    assert fitted["$defs"]["Tag"]["properties"]["name"]["maxLength"] == share
    assert fitted["properties"]["note"]["anyOf"][0]["maxLength"] == share


def test_no_room_leaves_the_schema_unchanged() -> None:
    schema = Summary.model_json_schema()
    assert fit_strings(schema, 40) == schema


# -- every reply the fitted grammar allows fits in max_tokens ---------------------------------

WIDE = "\U0001f600"  # 4 UTF-8 bytes: the widest character a bounded string holds

leaves = st.one_of(
    st.just({"type": "string"}),
    st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.text("abcé", min_size=1, max_size=6), min_size=1, max_size=3, unique=True).map(
        lambda vs: {"enum": vs}
    ),
    st.tuples(st.integers(-999, 0), st.integers(0, 99999)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[1]}
    ),
)


def _objects(children: Any) -> Any:
    props = st.dictionaries(st.sampled_from(["a", "bb", "ccc", "d"]), children, min_size=1)
    return st.one_of(
        props.map(lambda p: {"type": "object", "properties": p, "required": sorted(p)}),
        st.tuples(children, st.integers(1, 3)).map(
            lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1]}
        ),
        st.lists(children, min_size=2, max_size=2).map(lambda bs: {"anyOf": bs}),
    )


schemas = st.recursive(leaves, _objects, max_leaves=6).map(
    lambda s: {"type": "object", "properties": {"root": s}, "required": ["root"]}
)


def _longest(schema: dict[str, Any]) -> Any:
    """The value of ``schema`` with the most bytes (strings full of 4-byte characters)."""
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v, ensure_ascii=False).encode()))
    if "anyOf" in schema:
        return max((_longest(b) for b in schema["anyOf"]), key=lambda v: len(_text(v)))
    kind = schema["type"]
    if kind == "string":
        return WIDE * schema["maxLength"]
    if kind == "object":
        return {k: _longest(v) for k, v in schema["properties"].items()}
    if kind == "array":
        return [_longest(schema["items"]) for _ in range(schema["maxItems"])]
    if kind == "integer":
        low, high = schema["minimum"], schema["maximum"]
        return low if len(str(low)) > len(str(high)) else high
    return {"boolean": False, "null": None}[kind]


def _has_open_string(schema: Any) -> bool:
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "maxLength" not in schema:
            return True
        return any(_has_open_string(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_open_string(v) for v in schema)
    return False


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


@pytest.fixture(scope="module")
def compiler(tiny_llama: Path) -> Any:
    xgr = pytest.importorskip("xgrammar")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer)), tokenizer


@settings(max_examples=60, deadline=None)
@given(schema=schemas, max_tokens=st.integers(40, 300))
def test_the_longest_reply_fits_and_the_grammar_takes_it(
    compiler: Any, schema: dict[str, Any], max_tokens: int
) -> None:
    xgr = pytest.importorskip("xgrammar")
    fitted = fit_strings(schema, max_tokens)
    # something to fit, and room for one character per open string
    assume(_has_open_string(schema) and not _has_open_string(fitted))
    longest = _text(_longest(fitted))
    assert len(longest.encode()) <= max_tokens  # a token is one byte at least
    grammar_compiler, tokenizer = compiler
    grammar = grammar_compiler.compile_json_schema(
        json.dumps(fitted), any_whitespace=False, strict_mode=True
    )
    matcher = xgr.GrammarMatcher(grammar)
    ids = tokenizer(longest, add_special_tokens=False)["input_ids"]
    assert all(matcher.accept_token(t) for t in ids), longest
    assert matcher.is_completed()
    assert len(ids) <= max_tokens
