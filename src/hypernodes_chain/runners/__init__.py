"""Runners execute graphs; they share one core (`_core`) and differ only in scheduling."""

from .runner import Runner

__all__ = ["Runner"]
