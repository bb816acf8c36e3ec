"""Cache identity: node fingerprints, chained keys, outputs and the errors runners raise.

Cache keys chain: the key of a node's result is ``combine(node fingerprint, keys of its
inputs)``, where a root input's key is the content hash of its value. So editing a node's
code invalidates it and everything downstream, and a key never depends on which runner
computed it or whether it ran under ``run`` or ``map``.

A node's fingerprint is built from the parts its kind supplies (``Node.fingerprint_parts``:
code, outputs, closure values, defaults; a nested graph its inner nodes; an LLM node adds
its engine, sampling and schema): the core asks, it never switches on the kind.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from .. import hashing
from ..exceptions import InterruptError, NodeError
from ..node import Node
from ..plan import Step

__all__ = [
    "chain_key",
    "node_error",
    "node_fingerprint",
    "output_key",
    "seed_fingerprint",
    "store",
    "unpack",
]

# node -> its fingerprint (None: uncacheable), or (fingerprint, the helper names it followed)
_NODE_FP: weakref.WeakKeyDictionary[
    Node[..., Any], str | tuple[str | None, tuple[hashing.Ref, ...]] | None
] = weakref.WeakKeyDictionary()
_UNKNOWN: Any = object()


def node_fingerprint(node: Node[..., Any]) -> str | None:
    """Identity of a node's computation, from the parts its kind supplies: its code
    (with the user helpers it calls), closure values and defaults, inner nodes.

    None when some part cannot be fingerprinted; such a node is never cached. Memoised per
    node; the memo is dropped when a helper the code reached by name is rebound (a
    notebook cell redefining it). A node that calls no helper pays nothing for that.
    """
    known = _NODE_FP.get(node, _UNKNOWN)
    if type(known) is str:
        return known  # the common case: cacheable, and no helper to check
    if known is None:
        return None
    if known is not _UNKNOWN and hashing.refs_current(known[1]):
        return known[0]  # type: ignore[no-any-return]
    refs: list[hashing.Ref] = []
    parts: list[str | None] = []
    for kind, part in node.fingerprint_parts():
        if kind == "code":
            code, code_refs = hashing.code_identity(part)
            refs += code_refs
            parts.append(code)
        elif kind == "node":
            parts.append(node_fingerprint(part))
            inner = _NODE_FP.get(part)
            if type(inner) is tuple:
                refs += inner[1]
        else:
            parts.append(hashing.fingerprint(part))
    # a part that cannot be fingerprinted (a closure over a lock, say) makes the
    # node uncacheable: guessing would risk two different nodes sharing keys
    fp = None if None in parts else hashing.combine(*parts)  # type: ignore[arg-type]
    _NODE_FP[node] = (fp, tuple(refs)) if refs else fp
    return fp


def seed_fingerprint(node: Node[..., Any], fp: str | None) -> None:
    """Take ``fp`` as the node's fingerprint: a copy of a node sent to another process
    keeps the one computed where its source could be read."""
    _NODE_FP[node] = fp


def keys_of_constants(constants: dict[str, Any], cached: bool) -> dict[str, str | None] | None:
    """The keys of a map's constant inputs (computed once per map), or None without a cache."""
    if not cached:
        return None
    return {name: hashing.fingerprint(value) for name, value in constants.items()}


def chain_key(fp: str | None, source_keys: Sequence[str | None]) -> str | None:
    """A node's cache key: its fingerprint chained with the keys of its inputs."""
    if fp is None or None in source_keys:
        return None
    return hashing.combine(fp, *source_keys)  # type: ignore[arg-type]


def output_key(step: Step, key: str | None, name: str, value: object) -> str | None:
    """The provenance key of one output value.

    An uncached node's outputs are keyed by their content, so that its consumers can
    still be cached when the value is the same; otherwise the node's key (itself for a
    single output).
    """
    if key is None and not step.node.cache:
        return hashing.fingerprint(value)
    if key is None or len(step.node.outputs) == 1:
        return key
    return hashing.combine(key, name)


def unpack(step: Step, result: object) -> tuple[object, ...]:
    outputs = step.node.outputs
    if len(outputs) == 1:
        return (result,)
    if not isinstance(result, (tuple, list)) or len(result) != len(outputs):
        got = f"{type(result).__name__}" + (
            f" of length {len(result)}" if hasattr(result, "__len__") else ""
        )
        msg = (
            f"node {step.node.name!r} declares {len(outputs)} outputs {outputs} but returned {got}"
        )
        raise TypeError(msg)
    return tuple(result)


def node_error(
    step: Step, error: BaseException, index: int | None, path: tuple[str, ...]
) -> Exception:
    """The error a runner raises for a failed node: names node, item and inputs."""
    name = step.node.name
    where = f" for item {index}" if index is not None else ""
    if isinstance(error, InterruptError):
        msg = f"{error} (in node {name!r}{where})"
        return InterruptError(msg)
    if isinstance(error, NodeError):  # from a nested graph: keep the innermost story
        inner = error
        msg = f"node {name!r}{where} failed inside: {inner}"
        return NodeError(msg, node=inner.node, index=index, path=inner.path)
    inputs = ", ".join(step.sources) or "no inputs"
    msg = (
        f"node {name!r}{where} failed with {type(error).__name__}: {error} "
        f"(inputs: {inputs}; path: {' > '.join(path) or '-'})"
    )
    return NodeError(msg, node=name, index=index, path=path)


def store(
    step: Step,
    result: object,
    values: dict[str, Any],
    keys: dict[str, str | None] | None,
    key: str | None,
) -> None:
    for name, value in zip(step.node.outputs, unpack(step, result)):
        if name not in step.used:  # given (an override) or read by nobody
            continue
        values[name] = value
        if keys is not None:
            keys[name] = output_key(step, key, name, value)
