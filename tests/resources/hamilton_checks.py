"""A Hamilton dataflow with ``@check_output``: a warning validator and a failing one."""

from __future__ import annotations

from hamilton.function_modifiers import check_output


@check_output(range=(0.0, 100.0), importance="warn")
def score(raw: float) -> float:
    """Ten times the raw value; above 100 Hamilton only warns."""
    return raw * 10


@check_output(range=(0.0, 1000.0), importance="fail")
def doubled(score: float) -> float:
    """Twice the score; above 1000 the validator fails the node."""
    return score * 2


def grade(doubled: float) -> str:
    return "high" if doubled > 500 else "low"
