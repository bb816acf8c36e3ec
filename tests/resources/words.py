"""The two-node text graph that many tests share: clean the text, count its words."""

from __future__ import annotations

from hypernodes_chain import node


@node(output_name="cleaned")
def clean(text: str) -> str:
    return text.strip().lower()


@node(output_name="n_words")
def count(cleaned: str) -> int:
    return len(cleaned.split())
