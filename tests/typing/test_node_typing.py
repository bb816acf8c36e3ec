"""Static typing: `@node` keeps the decorated function's signature for type checkers."""

from __future__ import annotations

import textwrap

import pytest

api = pytest.importorskip("mypy.api")

SNIPPET = textwrap.dedent(
    """
    from hypernodes_chain import node

    @node(output_name="y")
    def double(x: int) -> int:
        return 2 * x

    @node
    async def fetch(url: str, *, retries: int = 3) -> bytes:
        return b""

    reveal_type(double(3))
    reveal_type(fetch("u", retries=1))  # noqa
    double("three")
    coro = fetch("u", tries=2)
    """
)


def test_node_keeps_the_signature(tmp_path):
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out, err, status = api.run(
        [str(path), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         "--ignore-missing-imports", "--no-error-summary", "--hide-error-context"]
    )  # fmt: skip
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if ": " in line]
    assert 'note: Revealed type is "int"' in lines
    assert 'note: Revealed type is "typing.Coroutine[Any, Any, bytes]"' in lines
    assert any('Argument 1 to "__call__" of "Node" has incompatible type "str"' in x for x in lines)
    assert any('Unexpected keyword argument "tries"' in x for x in lines)
    assert status == 1, err
