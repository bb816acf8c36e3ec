"""A Hamilton dataflow whose config key ``fn_1_version`` is read by ``@config.when`` only."""

from __future__ import annotations

from hamilton.function_modifiers import config


@config.when(fn_1_version=1)
def fn__v1() -> int:
    return 1


@config.when(fn_1_version=2)
def fn__v2() -> int:
    return 2
