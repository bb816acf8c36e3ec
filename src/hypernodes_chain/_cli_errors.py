"""The command line's error types, and exception text squeezed onto one line."""

from __future__ import annotations

__all__ = ["CliError", "InputRecordError", "one_line"]


class CliError(Exception):
    """A usage error: printed as one line, exit code 2."""


class InputRecordError(ValueError):
    """A record of INPUTS that cannot feed the graph (not an object, or a field missing)."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line; its type name when the message is empty."""
    return " ".join(str(exc).split()) or type(exc).__name__
