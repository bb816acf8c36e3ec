"""`VLLMEngine` in server mode: ``vllm serve`` as a subprocess, talked to over HTTP.

`ServerBackend.start` launches ``python -m vllm.entrypoints.openai.api_server --model MODEL
--host 127.0.0.1 --port PORT`` (engine arguments as ``--kebab-case`` flags) in its own process
group, logs to a file in a temporary folder (named in every error), waits for ``/health``, and
sends every call through an `OpenAIEngine` (chat completions: a str prompt goes as one user
message, so the chat template applies to it). ``stop()`` ends the whole process group
(SIGTERM, then SIGKILL after ``stop_timeout`` seconds) and removes the log. A server left
running is ended when the backend is collected or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import optional
from ..exceptions import VLLMEngineError
from ._vllm_common import vllm_lib
from .base import Prompt
from .openai_engine import OpenAIEngine

__all__ = ["ServerBackend", "ServerConfig"]

_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_LOG_TAIL = 4000  # characters of the server log quoted in a startup error
_POLL = 0.5  # seconds between two /health probes


def _free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def flags(engine_args: Mapping[str, Any]) -> list[str]:
    """Engine arguments as server flags: ``max_model_len=512`` -> ``--max-model-len 512``;
    True -> ``--flag``, False -> ``--no-flag``, None is left out, a dict is sent as JSON and
    a list or tuple as one value each."""
    out: list[str] = []
    for key, value in engine_args.items():
        name = key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            out.append(f"--{name}")
        elif value is False:
            out.append(f"--no-{name}")
        elif isinstance(value, Mapping):
            out += [f"--{name}", json.dumps(dict(value))]
        elif isinstance(value, list | tuple | set | frozenset):
            out += [f"--{name}", *(str(v) for v in value)]
        else:
            out += [f"--{name}", str(value)]
    return out


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is left (a zombie of it counts only while its parent
    has not reaped it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group holds a process we cannot signal
        return True
    return True


def _end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End the server's process group: SIGTERM, up to ``grace`` seconds, then SIGKILL."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    if proc.poll() is None or _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _LOG_TAIL))
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return text if size <= _LOG_TAIL else "..." + text


@dataclass(frozen=True)
class ServerConfig:
    """What launching and talking to the server takes (from the engine's arguments)."""

    model: str  # as vLLM gets it
    served_name: str
    flags: list[str]
    where: str  # names the engine in errors
    max_concurrency: int
    startup_timeout: float
    stop_timeout: float
    request_timeout: float
    retries: int


class _Server:
    """A running ``api_server`` process, its log and the client that talks to it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log_dir: Path,
        client: OpenAIEngine,
        finalizer: weakref.finalize[Any, Any],
    ) -> None:
        self.proc = proc
        self.log_dir = log_dir
        self.log_file = log_dir / "server.log"
        self.client = client
        self.finalizer = finalizer


class ServerBackend:
    """A ``vllm serve`` subprocess and its `OpenAIEngine` client; see the module docstring."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()  # start / stop
        self._server: _Server | None = None

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def log_file(self) -> Path | None:
        server = self._server
        return server.log_file if server is not None else None

    @property
    def pid(self) -> int | None:
        server = self._server
        return server.proc.pid if server is not None else None

    @property
    def usage(self) -> dict[str, int]:
        """The client's token counts, where it keeps them (else {})."""
        server = self._server
        usage = getattr(server.client, "usage", None) if server is not None else None
        return dict(usage) if isinstance(usage, Mapping) else {}

    def start(self) -> None:
        self._client()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.client.stop()
        server.finalizer.detach()
        _end_group(server.proc, self.config.stop_timeout)
        shutil.rmtree(server.log_dir, ignore_errors=True)

    # ----------------------------------------------------------------- requests

    def generate(
        self, prompts: list[Prompt], schema: Mapping[str, Any] | None, sampling: dict[str, Any]
    ) -> list[str | Exception]:
        replies = self._client().generate(prompts, schema=schema, **sampling)
        return self._checked(replies)

    async def agenerate(
        self, prompts: list[Prompt], schema: Mapping[str, Any] | None, sampling: dict[str, Any]
    ) -> list[str | Exception]:
        client = await asyncio.to_thread(self._client)
        return self._checked(await client.agenerate(prompts, schema=schema, **sampling))

    def stream(self, prompt: Prompt, sampling: dict[str, Any]) -> Generator[str, None, None]:
        try:
            yield from self._client().stream(prompt, **sampling)
        except Exception as exc:
            raise self._error(exc) from exc

    async def astream(self, prompt: Prompt, sampling: dict[str, Any]) -> AsyncGenerator[str, None]:
        client = await asyncio.to_thread(self._client)
        try:
            async for chunk in client.astream(prompt, **sampling):
                yield chunk
        except Exception as exc:
            raise self._error(exc) from exc

    def _checked(self, replies: Sequence[str | Exception]) -> list[str | Exception]:
        return [self._error(r) if isinstance(r, Exception) else r for r in replies]

    def _error(self, exc: BaseException) -> VLLMEngineError:
        """A server-mode failure as an error naming the engine, the model and the log."""
        if isinstance(exc, VLLMEngineError):
            return exc
        server = self._server
        log = str(server.log_file) if server is not None else None
        state = ""
        if server is not None and server.proc.poll() is not None:
            state = f", which exited with code {server.proc.returncode}"
        error = VLLMEngineError(
            f"{self.config.where} (server log {log}{state}): {type(exc).__name__}: {exc}",
            log_file=log,
        )
        error.__cause__ = exc
        return error

    # ----------------------------------------------------------------- launching

    def _client(self) -> OpenAIEngine:
        """The running server's client; launches the server on first use."""
        with self._lock:
            if self._server is None:
                self._server = self._launch()
            server = self._server
        return server.client

    def _launch(self) -> _Server:
        config = self.config
        if importlib.util.find_spec("vllm") is None:
            vllm_lib("vllm")  # the ImportError saying what to install
        optional("httpx", "VLLMEngine", "llm")  # the OpenAIEngine's client
        port = _free_port()
        log_dir = Path(tempfile.mkdtemp(prefix="hypernodes-vllm-"))
        log_file = log_dir / "server.log"
        command = [
            sys.executable, "-m", _SERVER_MODULE, "--model", config.model,
            "--host", "127.0.0.1", "--port", str(port), *config.flags,
        ]  # fmt: skip
        with log_file.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finalizer = weakref.finalize(self, _end_group, proc, config.stop_timeout)
        where = f"{config.where}: the server (pid {proc.pid}, log {log_file})"
        try:
            self._wait_healthy(proc, port, where, log_file)
            client = OpenAIEngine(
                f"http://127.0.0.1:{port}/v1",
                config.served_name,
                max_concurrency=config.max_concurrency,
                retries=config.retries,
                timeout=config.request_timeout,
            )
            client.start()
        except BaseException as exc:
            finalizer.detach()
            _end_group(proc, config.stop_timeout)
            if isinstance(exc, VLLMEngineError) or not isinstance(exc, Exception):
                raise
            raise VLLMEngineError(
                f"{where} did not answer: {type(exc).__name__}: {exc}", log_file=str(log_file)
            ) from exc
        return _Server(proc, log_dir, client, finalizer)

    def _wait_healthy(
        self, proc: subprocess.Popen[bytes], port: int, where: str, log_file: Path
    ) -> None:
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + self.config.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise VLLMEngineError(
                    f"{where} exited with code {code} before it was ready; the log ends:\n"
                    f"{_tail(log_file)}",
                    log_file=str(log_file),
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise VLLMEngineError(
                    f"{where} was not healthy after startup_timeout="
                    f"{self.config.startup_timeout:g} s; the log ends:\n{_tail(log_file)}",
                    log_file=str(log_file),
                )
            time.sleep(_POLL)
