"""What a user sees when printing the records runners return."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.exceptions import LLMOutputError, RecordedError
from hypernodes_chain.io import StreamWriter
from hypernodes_chain.results import Failures, ItemFailure


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


def test_a_failure_record_reads_back_with_its_type_message_and_inputs() -> None:
    try:
        raise LLMOutputError("summarize", '{"title": 1', "title: Input should be a string")
    except LLMOutputError as exc:
        failure = ItemFailure.from_exception(7, "summarize", exc, ("outer", "summarize"))
    failure = failure.with_inputs({"text": "a review", "n": 3})
    back = ItemFailure.from_record(json.loads(json.dumps(failure.to_record())))

    assert (back.index, back.node, back.path) == (7, "summarize", ("outer", "summarize"))
    assert (back.error_type, back.message) == ("LLMOutputError", failure.message)
    assert back.traceback == failure.traceback and "Traceback" in back.traceback
    assert back.inputs == {"text": "a review", "n": 3}
    assert isinstance(back.error, RecordedError) and back.error.raw == '{"title": 1'
    assert back.to_record() == failure.to_record()


def test_failures_in_memory_behave_like_their_list() -> None:
    records = [ItemFailure(i, "inv", ZeroDivisionError("division by zero")) for i in range(3)]
    failures = Failures(records)

    assert failures == records and failures[1:] == records[1:] and failures[-1] is records[2]
    assert len(failures) == 3 and bool(failures) and not Failures()
    with pytest.raises(ValueError, match="5 failures with 3 in memory need read= for the rest"):
        Failures(records, 5)
