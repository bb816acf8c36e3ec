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


# The project's settings (pyproject.toml), plus: do not analyse the modules of other packages.
# node.py imports only the standard library, so the types checked here do not depend on them,
# and skipping them (numpy, IPython, rich, ... reached through hypernodes_chain/__init__)
# takes the check from ~6 s to ~2 s. The standard library's stubs are still read.
CONFIG = """
[mypy]
python_version = 3.10
strict = True
follow_imports = skip

[mypy-hypernodes_chain,hypernodes_chain.*]
follow_imports = normal
"""


def test_node_keeps_the_signature(tmp_path):
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    (tmp_path / "mypy.ini").write_text(CONFIG)
    out, err, status = api.run(
        [str(path), "--config-file", str(tmp_path / "mypy.ini"), "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "--ignore-missing-imports", "--no-error-summary",
         "--hide-error-context"]
    )  # fmt: skip
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if ": " in line]
    assert 'note: Revealed type is "int"' in lines
    assert 'note: Revealed type is "typing.Coroutine[Any, Any, bytes]"' in lines
    assert any('Argument 1 to "__call__" of "Node" has incompatible type "str"' in x for x in lines)
    assert any('Unexpected keyword argument "tries"' in x for x in lines)
    assert status == 1, err
