"""One writer per output folder: an exclusive lock that names its holder.

The lock is `filelock.FileLock` (``flock`` on POSIX), so the kernel releases it when the
holding process dies, however it dies: a stale lock of a dead process is simply taken
over. The holder writes who it is (pid, host, start time, command) into the lock file, so
the second writer's error can name it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import filelock

from ..exceptions import WriterLockedError

__all__ = ["LOCK_FILE", "FolderLock"]

LOCK_FILE = "_writer.lock"


class FolderLock:
    """Exclusive, non-blocking lock on ``folder``; `acquire` fails at once if held."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._lock = filelock.FileLock(self.path, timeout=0)

    def acquire(self) -> None:
        """Take the lock, or raise `WriterLockedError` naming the writer that holds it."""
        try:
            self._lock.acquire()
        except filelock.Timeout:
            msg = (
                f"another writer is writing to {str(self.path.parent)!r} ({self._holder()}); "
                f"wait for it to finish, stop it, or choose another path"
            )
            raise WriterLockedError(msg) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:200],
        }
        try:
            self.path.write_text(json.dumps(owner) + "\n", encoding="utf-8")
        except OSError:
            pass  # the lock holds either way; only the holder's name is lost

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def _holder(self) -> str:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            return (
                f"held by pid {owner['pid']} on {owner['host']} since {owner['since']}: "
                f"{owner['command']}"
            )
        except (OSError, ValueError, KeyError, TypeError):
            return "held by a process that has not said who it is yet"
