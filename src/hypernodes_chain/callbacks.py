"""Callbacks: the public way to observe a run.

A `Callback` receives every event; it dispatches each one to ``on_<snake_case event
class name>`` (``on_node_started``, ``on_streaming_chunk_event``) and to ``on_event``.
Subclasses override only the methods they need.

The built-in callbacks subclass it in their own modules: `progress.ProgressCallback` and
`jsonlog.JsonLogCallback` (both exported by ``hypernodes_chain``).
"""

from __future__ import annotations

import re
from typing import ClassVar

from .events import Event

__all__ = ["Callback"]

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def handler_name(event_type: type[Event]) -> str:
    """``NodeStarted`` -> ``on_node_started``."""
    return "on_" + _CAMEL.sub("_", event_type.__name__).lower()


class Callback:
    """Base class for run observers; call it with an event to dispatch it."""

    _dispatch: ClassVar[dict[type[Event], str]] = {}

    def __call__(self, event: Event) -> None:
        cls = type(event)
        name = self._dispatch.get(cls)
        if name is None:
            name = self._dispatch[cls] = handler_name(cls)
        method = getattr(self, name, None)
        if method is not None:
            method(event)
        self.on_event(event)

    def on_event(self, event: Event) -> None:
        """Called for every event, after the specific ``on_<event>`` method."""
