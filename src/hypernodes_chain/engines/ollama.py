"""OllamaEngine: a model served by Ollama, through the official ``ollama`` client.

A str prompt goes to ``/api/generate``, chat messages to ``/api/chat``; one request per
prompt. The engine holds one client and one thread pool, opened on first use and closed by
``stop()``: the prompts of every `generate` and `agenerate` call go to that pool, and every
request of every caller takes one of its ``max_concurrency`` slots (`Connections`): that many
requests in flight on the engine in this process, whoever sends them (``astream`` uses an
``AsyncClient`` of its event loop, in the same slots).

``schema`` goes as ``format=<JSON schema>`` (Ollama's structured outputs); the sampling
keywords become Ollama ``options`` (``max_tokens`` as ``num_predict``; ``temperature``,
``top_p``, ``seed``, ``stop`` and any other option as given). ``start()`` loads the model (an
empty generate request with ``keep_alive``), ``stop()`` unloads it (``keep_alive=0``) and
closes the client and the pool.

Transient failures (connection refused or reset, timeouts, HTTP 429 and 5xx) are retried
``retries`` times with exponential back-off and jitter (`RetryPolicy`); what still fails is
that prompt's `OllamaError`, naming the engine, the model and the host. Connecting times out
after a few seconds, so a server that is down is an error, never a hang.

``ollama`` and ``tenacity`` are imported when the engine is used, never at import time
(install them with the ``llm`` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from .._optional import optional
from ..exceptions import OllamaError
from ._http import Connections
from ._retry import RetryPolicy
from .base import Prompt, Reply, Sampling, chat_messages

__all__ = ["OllamaEngine", "OllamaError"]

DEFAULT_HOST = "http://127.0.0.1:11434"
# back-off between attempts: 0.2 s, 0.4 s, 0.8 s, ... (at most 5 s), plus up to 0.2 s of jitter
_BACKOFF = (0.2, 5.0)
_CONNECT_TIMEOUT = 5.0


def _lib(name: str) -> Any:
    return optional(name, "OllamaEngine", "llm")


def _normalize_host(host: str | None) -> str:
    """``host`` (or ``$OLLAMA_HOST``) as ``scheme://host:port`` (the client's own rules)."""
    raw = (host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST).strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    default_port = (
        {"http": 80, "https": 443}[scheme] if sep and scheme in ("http", "https") else 11434
    )
    split = urllib.parse.urlsplit(f"{scheme}://{rest}")
    name = split.hostname or "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    port = split.port or default_port
    path = split.path.strip("/")
    return f"{scheme}://{name}:{port}" + (f"/{path}" if path else "")


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) and code >= 0 else None


def _transient(exc: BaseException) -> bool:
    """Connection refused or reset, timeouts, HTTP 429 and 5xx."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    httpx = _lib("httpx")
    if isinstance(exc, httpx.TransportError):
        return True
    code = _status(exc)
    return code is not None and (code == 429 or code >= 500)


class OllamaEngine:
    """A model of an Ollama server (``ollama serve``), e.g. ``OllamaEngine("llama3.2")``.

    ``host``: ``"http://127.0.0.1:11434"`` by default (or ``$OLLAMA_HOST``). ``keep_alive``:
    how long the server keeps the model loaded after a request (``"5m"``, seconds, ``-1`` for
    ever). ``max_concurrency``: requests in flight on this engine in this process, from every
    caller together (threads, event loops, nodes, runners). ``options``: Ollama options sent
    with every request (``num_ctx``, ``top_k``, ...), under the sampling keywords of a call.
    ``retries``: extra attempts after a transient failure. ``timeout``: seconds for one
    request (connecting: at most 5 s).

    Sampling keywords of `generate` / `stream`: ``max_tokens`` (``num_predict``),
    ``temperature``, ``top_p``, ``seed``, ``stop`` (a string or strings); any other keyword
    is an Ollama option.
    """

    kind = "ollama"

    def __init__(
        self,
        model: str,
        *,
        host: str | None = None,
        keep_alive: float | str = "5m",
        max_concurrency: int = 8,
        options: Mapping[str, Any] | None = None,
        retries: int = 3,
        timeout: float = 60.0,
    ) -> None:
        if not model:
            raise ValueError("OllamaEngine needs a model name")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.model = model
        self.host = _normalize_host(host)
        self.keep_alive = keep_alive
        self.max_concurrency = max_concurrency
        self.options = dict(options or {})
        self.retries = retries
        self.timeout = float(timeout)
        self._init_state()

    _CONFIG = ("model", "host", "keep_alive", "max_concurrency", "options", "retries", "timeout")

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._digest: str | None = None
        self._retry = RetryPolicy(retries=self.retries, transient=_transient, backoff=_BACKOFF)
        self._http = Connections(
            max_concurrency=self.max_concurrency,
            name="OllamaEngine",
            open_client=lambda: _lib("ollama").Client(host=self.host, **self._client_kwargs()),
        )

    def __getstate__(self) -> dict[str, Any]:
        """Only the configuration travels (to Dask workers): clients and locks are rebuilt."""
        return {name: getattr(self, name) for name in self._CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __repr__(self) -> str:
        return f"OllamaEngine({self.model!r}, host={self.host!r})"

    # ----------------------------------------------------------------- plumbing

    def _client_kwargs(self) -> dict[str, Any]:
        httpx = _lib("httpx")
        n = self.max_concurrency
        return {
            "timeout": httpx.Timeout(self.timeout, connect=min(self.timeout, _CONNECT_TIMEOUT)),
            "limits": httpx.Limits(max_connections=n, max_keepalive_connections=n),
        }

    def _one_off_client(self) -> Any:
        # for the digest lookup: an engine that is never started holds no connection
        return _lib("ollama").Client(host=self.host, **self._client_kwargs())

    def _send(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        """One request on the engine's client, in a slot, retried when transient."""
        client = self._http.client()

        def attempt() -> Any:
            with self._http.slots:
                return getattr(client, method)(**kwargs)

        return self._retry.call(attempt)

    def _error(self, exc: BaseException, what: str = "request") -> OllamaError:
        """``exc`` as an error naming the engine, the model and the host."""
        if isinstance(exc, OllamaError):
            return exc
        code = _status(exc)
        where = f"ollama engine, model {self.model!r} at {self.host}"
        if code == 404:
            msg = (
                f"{where}: model {self.model!r} not found at {self.host} (ollama pull {self.model})"
            )
        elif isinstance(exc, ConnectionError) or _is_connect_error(exc):
            msg = f"{where}: cannot connect to the Ollama server at {self.host} (is it running?)"
        else:
            detail = str(exc) or type(exc).__name__
            msg = f"{where}: {what} failed: {type(exc).__name__}: {detail}"
            if _transient(exc):
                msg += f" (after {self.retries} retries)"
        error = OllamaError(msg)
        error.__cause__ = exc
        return error

    def _request(
        self,
        prompt: Prompt,
        schema: Mapping[str, Any] | None,
        sampling: Mapping[str, Any],
        stream: bool,
    ) -> tuple[str, dict[str, Any]]:
        """The client method (``generate`` or ``chat``) and its keywords for one prompt."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "options": self._options(sampling),
            "keep_alive": self.keep_alive,
            "stream": stream,
        }
        if schema is not None:
            kwargs["format"] = dict(schema)
        if isinstance(prompt, str):
            return "generate", {**kwargs, "prompt": prompt}
        if isinstance(prompt, Sequence):
            return "chat", {**kwargs, "messages": chat_messages(prompt)}
        raise TypeError(f"a prompt is a str or a list of chat messages, got {prompt!r}")

    def _options(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        """The engine's options, under the call's sampling keywords (Ollama's names)."""
        params = Sampling.of(sampling)
        options = dict(self.options)
        options.update(
            num_predict=params.max_tokens, temperature=params.temperature, top_p=params.top_p
        )
        if params.seed is not None:
            options["seed"] = params.seed
        if params.stop:
            options["stop"] = list(params.stop)
        options.update(params.extra)
        return options

    @staticmethod
    def _text(part: Any) -> str:
        message = getattr(part, "message", None)
        if message is not None:
            return str(message.content or "")
        return str(getattr(part, "response", None) or "")

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load the model on the server (an empty generate request with ``keep_alive``).

        Raises `OllamaError` when the server is down or does not have the model."""
        try:
            self._send("generate", {"model": self.model, "keep_alive": self.keep_alive})
        except Exception as exc:
            raise self._error(exc, "loading the model") from exc
        self._loaded = True
        self._digest = None  # the model may have been pulled again: look its digest up anew

    def stop(self) -> None:
        """Unload the model (``keep_alive=0``) and close the engine's clients and pool;
        idempotent. A server that is down or no longer has the model holds nothing, so
        those are not errors."""
        with self._lock:
            loaded, self._loaded = self._loaded, False
        try:
            if loaded:
                self._unload()
        finally:
            self._http.close()

    def _unload(self) -> None:
        try:
            with self._http.slots:
                self._http.client().generate(model=self.model, keep_alive=0)
        except Exception as exc:
            if _status(exc) == 404 or isinstance(exc, ConnectionError):
                return
            if _is_connect_error(exc):
                return
            raise self._error(exc, "unloading the model") from exc

    def identity(self) -> dict[str, Any]:
        """Engine kind, model name, the model's digest (from ``/api/tags``, or a hash of
        ``/api/show`` where the list lacks it) and the host; it loads no model."""
        if self._digest is None:
            self._digest = self._lookup_digest()
        return {"engine": self.kind, "model": self.model, "digest": self._digest, "host": self.host}

    def _lookup_digest(self) -> str:
        names = {self.model} if ":" in self.model else {self.model, f"{self.model}:latest"}
        with self._one_off_client() as client:
            try:
                listing = self._retry.call(client.list)
                for entry in listing.models:
                    name = entry.model or getattr(entry, "name", None)
                    if name in names and entry.digest:
                        return str(entry.digest)
                shown = self._retry.call(lambda: client.show(self.model))
            except Exception as exc:
                raise self._error(exc, "looking up the model's digest") from exc
        blob = json.dumps(shown.model_dump(mode="json"), sort_keys=True, default=str)
        return "show:" + hashlib.sha256(blob.encode()).hexdigest()

    # ----------------------------------------------------------------- generation

    def _one(
        self, prompt: Prompt, schema: Mapping[str, Any] | None, sampling: Mapping[str, Any]
    ) -> str | Exception:
        try:
            method, kwargs = self._request(prompt, schema, sampling, stream=False)
        except Exception as exc:
            return exc
        try:
            part = self._send(method, kwargs)
        except Exception as exc:
            return self._error(exc)
        self._loaded = True
        return Reply(
            self._text(part),
            prompt_tokens=_count(getattr(part, "prompt_eval_count", None)),
            completion_tokens=_count(getattr(part, "eval_count", None)),
        )

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """One reply per prompt, in order (a `Reply` with the server's prompt and completion
        token counts); a prompt that fails (after retries) gets its exception. Each prompt
        goes to the engine's pool, so concurrent calls share it."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        return self._http.map(lambda p: self._one(p, schema, sampling), prompts)

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """The async twin of `generate`: the same pool and slots, awaited without holding a
        thread."""
        if isinstance(prompts, str):
            raise TypeError("agenerate takes a list of prompts, not one str")
        return await self._http.amap(lambda p: self._one(p, schema, sampling), prompts)

    # ----------------------------------------------------------------- streaming

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """The text chunks of one reply as the server streams them (``schema=`` too); the
        stream holds a slot until it ends. Opening the stream is retried like a request; a
        failure later is an `OllamaError`."""
        return self._chunks(prompt, sampling, threading.Event())

    def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream`: the same body, on the engine's pool."""
        return self._http.astream(lambda cancel: self._chunks(prompt, sampling, cancel))

    def _chunks(
        self, prompt: Prompt, sampling: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        schema = sampling.pop("schema", None)
        method, kwargs = self._request(prompt, schema, sampling, stream=True)
        client = self._http.client()
        slots = self._http.slots

        def open_stream() -> tuple[Any, Any]:
            slots.acquire()
            try:
                parts = getattr(client, method)(**kwargs)  # sends at the first part
                return parts, next(parts, None)
            except BaseException:
                slots.release()
                raise

        try:
            parts, part = self._retry.call(open_stream)
        except Exception as exc:
            raise self._error(exc, "streaming") from exc
        self._loaded = True
        try:
            while part is not None and not cancel.is_set():
                text = self._text(part)
                if text:
                    yield text
                try:
                    part = next(parts, None)
                except Exception as exc:
                    raise self._error(exc, "streaming") from exc
        finally:
            parts.close()
            slots.release()


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _is_connect_error(exc: BaseException) -> bool:
    try:
        httpx = _lib("httpx")
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
