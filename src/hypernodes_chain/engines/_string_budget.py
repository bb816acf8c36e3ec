"""Bound a JSON schema's open strings so that a constrained reply can close within max_tokens.

A grammar-constrained decoder never emits a token that breaks the schema, but it lets a
string run on for as long as the model keeps writing it, so a weak model can spend every one
of ``max_tokens`` inside the first string and leave the JSON unfinished. `fit_strings` gives
each string without ``maxLength`` (and without ``pattern``, ``format``, ``enum`` or
``const``) an equal share of what ``max_tokens`` leaves after the rest of the schema.

The budget is counted in bytes, which bounds tokens: a token the grammar allows decodes to
one byte at least. A character of a bounded string takes at most ``bytes_per_char`` bytes
(xgrammar's bounded strings hold raw characters, no escapes: 4 UTF-8 bytes at most), and
the rest of the schema is sized at its longest compact form (``", "`` and ``": "``
separators, the longest enum value, the digits of an integer's ``minimum`` and
``maximum``, ``maxItems`` items). So when every other part has bounds, every reply the
grammar allows fits in ``max_tokens``. Parts without bounds (numbers, integers without both
limits, arrays without ``maxItems``, free-form values) count as their shortest form: the
strings are still bounded, without that guarantee.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["fit_strings"]

_SHORTEST = {"null": 4, "boolean": 5, "number": 1, "integer": 1, "array": 2, "object": 2}


def fit_strings(
    schema: Mapping[str, Any], max_tokens: int, *, bytes_per_char: int = 4
) -> dict[str, Any]:
    """A copy of ``schema`` whose open strings have a ``maxLength`` that fits ``max_tokens``.

    Returns the schema unchanged (a copy) when it has no open string, or when the rest of
    it leaves no room for even one character per open string.
    """
    out: dict[str, Any] = copy.deepcopy(dict(schema))
    sizer = _Sizer(out, bytes_per_char)
    fixed = sizer.size(out, 1)
    uses = sum(count for _, count in sizer.open)
    if not uses:
        return out
    length = (max_tokens - fixed) // (bytes_per_char * uses)
    if length < 1:
        return copy.deepcopy(dict(schema))
    for node, _ in sizer.open:
        node["maxLength"] = max(length, int(node.get("minLength", 0)))
    return out


def _json_bytes(value: Any) -> int:
    """The longest way a grammar may spell ``value``: raw UTF-8 or ``\\u`` escapes."""
    raw = json.dumps(value, ensure_ascii=False).encode()
    return max(len(raw), len(json.dumps(value)))


class _Sizer:
    """Walks a schema: its longest size in bytes, open strings aside, and the open strings
    with how many times each can occur (``$ref`` resolved against the root's ``$defs``)."""

    def __init__(self, root: dict[str, Any], bytes_per_char: int) -> None:
        self.root = root
        self.bytes_per_char = bytes_per_char
        self.open: list[tuple[dict[str, Any], int]] = []
        self._seen: dict[int, int] = {}  # id(open string node) -> index in self.open
        self._refs: list[str] = []  # the $refs being walked (a recursive one stops)

    def size(self, node: Any, uses: int) -> int:
        if not isinstance(node, dict):  # `true` / `{}`: anything
            return 1
        if "$ref" in node:
            return self._ref(node["$ref"], uses)
        if "const" in node:
            return _json_bytes(node["const"])
        if "enum" in node:
            return max((_json_bytes(v) for v in node["enum"]), default=2)
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            return max(self.size(b, uses) for b in branches)
        kind = node.get("type", "object" if "properties" in node else None)
        if isinstance(kind, list):
            return max((self._typed(node, k, uses) for k in kind), default=1)
        return self._typed(node, kind, uses)

    def _typed(self, node: dict[str, Any], kind: Any, uses: int) -> int:
        if kind == "string":
            return self._string(node, uses)
        if kind == "object":
            return self._object(node, uses)
        if kind == "array":
            return self._array(node, uses)
        if kind == "integer" and "minimum" in node and "maximum" in node:
            return max(len(str(int(node["minimum"]))), len(str(int(node["maximum"]))))
        return _SHORTEST.get(kind, 1) if isinstance(kind, str) else 1

    def _ref(self, ref: str, uses: int) -> int:
        if ref in self._refs or not ref.startswith("#/"):
            return 1
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        self._refs.append(ref)
        try:
            return self.size(target, uses)
        finally:
            self._refs.pop()

    def _string(self, node: dict[str, Any], uses: int) -> int:
        if "maxLength" in node:
            return 2 + self.bytes_per_char * int(node["maxLength"])
        if "pattern" in node or "format" in node:
            return 2
        key = id(node)
        if key in self._seen:  # a $defs string used again
            i = self._seen[key]
            self.open[i] = (node, self.open[i][1] + uses)
        else:
            self._seen[key] = len(self.open)
            self.open.append((node, uses))
        return 2

    def _object(self, node: dict[str, Any], uses: int) -> int:
        props = node.get("properties") or {}
        total = 2 + 2 * max(len(props) - 1, 0)  # braces, ", " between properties
        for key, sub in props.items():
            total += _json_bytes(key) + 2 + self.size(sub, uses)  # key ": " value
        return total

    def _array(self, node: dict[str, Any], uses: int) -> int:
        prefix = list(node.get("prefixItems") or [])
        items = node.get("items", {})
        most = node.get("maxItems", len(prefix) if items is False else None)
        if most is None:  # unbounded: the prefix alone, its items' strings counted once
            if isinstance(items, dict):
                self.size(items, uses)
            return 2 + sum(self.size(p, uses) + 2 for p in prefix)
        most = int(most)
        head = prefix[:most]
        total = 2 + 2 * max(most - 1, 0) + sum(self.size(p, uses) for p in head)
        rest = most - len(head)
        if rest > 0 and isinstance(items, dict):
            total += rest * self.size(items, uses * rest)
        return total
