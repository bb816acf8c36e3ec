"""What a user sees when printing the records runners return."""

from __future__ import annotations

from pathlib import Path

from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.io import StreamWriter


@node
def inv(x: int) -> float:
    return 1 / x


def test_a_map_result_repr_is_short_and_says_where_the_failures_are(tmp_path: Path) -> None:
    xs = [0 if i % 2 else i + 1 for i in range(200)]  # 100 failures, each with a traceback
    result = Runner().map(
        Graph([inv]),
        {"x": xs},
        map_over="x",
        on_error="collect",
        writer=StreamWriter(tmp_path / "out"),
    )
    text = repr(result)
    assert result.n_failed == 100 and all(f.traceback for f in result.failures)
    assert len(text) < 400, text
    assert "Traceback" not in text
    for part in ("n_items=200", "n_ok=100", "n_failed=100", "files=1", "_errors"):
        assert part in text, (part, text)
    assert "first: item 1, node 'inv', ZeroDivisionError: division by zero" in text


def test_an_item_failure_repr_leaves_the_traceback_out() -> None:
    out = Runner().map(Graph([inv]), {"x": [0]}, map_over="x", on_error="collect")
    failure = out[0]
    assert "Traceback" in failure.traceback
    assert "Traceback" not in repr(failure) and "ZeroDivisionError" in repr(failure)
