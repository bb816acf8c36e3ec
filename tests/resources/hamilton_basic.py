"""A plain Hamilton dataflow: optional dependencies, ``_private`` helpers, ``@config.when``
and ``__suffix`` functions, ``@tag`` and ``@does``."""

from __future__ import annotations

from hamilton.function_modifiers import config, does, tag


def _scale(value: float, factor: float) -> float:
    """A private helper: Hamilton skips it, so it is no node."""
    return value * factor


def spend(raw_spend: float, currency_rate: float = 1.0) -> float:
    """Spend in the reporting currency."""
    return _scale(raw_spend, currency_rate)


@tag(owner="finance", pii="false")
def signups(raw_signups: int) -> int:
    """Signups, never negative."""
    return max(raw_signups, 0)


def spend_per_signup(spend: float, signups: int) -> float:
    """Spend per signup (0 when nobody signed up)."""
    return spend / signups if signups else 0.0


@config.when(region="eu")
def tax__eu(spend: float) -> float:
    """EU tax."""
    return spend * 0.2


@config.when(region="us")
def tax__us(spend: float) -> float:
    """US tax."""
    return spend * 0.1


@config.when_not(region="eu")
def label__other(signups: int) -> str:
    return f"other:{signups}"


@config.when(region="eu")
def label__eu(signups: int, region: str) -> str:
    return f"{region}:{signups}"


def _sum_of(**values: float) -> float:
    return sum(values.values())


@does(_sum_of)
def total(spend: float, tax: float) -> float:
    """Spend plus tax, computed by ``_sum_of``."""


def report(total: float, label: str, discount: float = 0.0) -> str:
    return f"{label} total={total - discount:.2f}"
