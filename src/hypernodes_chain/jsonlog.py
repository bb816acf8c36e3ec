"""`JsonLogCallback`: one JSON object per event, one per line, to a stream or a file.

A line holds ``event`` (the class name), ``time`` (unix seconds), then every field of
the event in declaration order, ``path`` first. Exceptions become ``{"type", "message"}``;
any other value JSON cannot encode (a chunk, an interrupt's value) is written as ``str()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .callbacks import Callback
from .events import BatchFinished, Event, GraphFinished, MapFinished

__all__ = ["JsonLogCallback", "event_record"]

_FIELDS: dict[type[Event], tuple[str, ...]] = {}
# live objects some events may carry for in-process viewers; the event's own stamp (``time``
# is the line's)
_SKIP = frozenset({"graph_obj", "time_ns"})


def _encode(value: Any) -> Any:
    """``json.dumps`` fallback: exceptions as type and message, anything else as ``str()``."""
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "message": str(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def event_record(event: Event, now: float) -> dict[str, Any]:
    """The event as a flat dict: ``event``, ``time``, then its fields."""
    cls = type(event)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(
            f.name for f in dataclasses.fields(event) if f.name not in _SKIP
        )
    record: dict[str, Any] = {"event": cls.__name__, "time": now}
    for name in names:
        record[name] = getattr(event, name)
    return record


def _dumps(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, default=_encode, ensure_ascii=False)
    except (TypeError, ValueError):  # a circular value, or keys JSON cannot take
        safe = {}
        for name, value in record.items():
            try:
                json.dumps(value, default=_encode)
            except (TypeError, ValueError):
                value = str(value)
            safe[name] = value
        return json.dumps(safe, default=_encode, ensure_ascii=False)


class JsonLogCallback(Callback):
    """Write every event as one line of JSON.

    Parameters
    ----------
    stream_or_path
        An open text stream, or a path to a file opened in append mode (on the first
        event, and again after `close`). ``None`` writes to the current ``sys.stderr``.
    get_time
        The clock stamped as ``time`` (unix seconds by default).

    The stream is flushed after every batch and at the end of each run or map (a file
    is closed there, and reopened by the next run), so ``tail -f`` follows a long map
    and a crash loses at most one batch of lines.
    """

    def __init__(
        self,
        stream_or_path: IO[str] | str | os.PathLike[str] | None = None,
        *,
        get_time: Callable[[], float] = time.time,
    ) -> None:
        self.path: Path | None = None
        self._stream: IO[str] | None = None
        if isinstance(stream_or_path, (str, os.PathLike)):
            self.path = Path(stream_or_path)
        else:
            self._stream = stream_or_path
        self.get_time = get_time
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        run_over = isinstance(event, MapFinished) or (
            isinstance(event, GraphFinished) and len(event.path) == 1
        )
        with self._lock:  # stamp and write together: lines stay in time order across threads
            stream = self._open()
            stream.write(_dumps(event_record(event, self.get_time())) + "\n")
            if run_over and self.path is not None:
                self._close_file()  # no handle left open between runs
            elif run_over or isinstance(event, BatchFinished):
                stream.flush()

    def close(self) -> None:
        """Close the file this callback opened (a stream passed in is only flushed)."""
        with self._lock:
            if self.path is not None:
                self._close_file()
            elif self._stream is not None:
                self._stream.flush()

    def __enter__(self) -> JsonLogCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_file(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _open(self) -> IO[str]:
        if self._stream is not None:
            return self._stream
        if self.path is None:
            return sys.stderr  # looked up per event: pytest and IPython swap it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self.path.open("a", encoding="utf-8")
        return self._stream
