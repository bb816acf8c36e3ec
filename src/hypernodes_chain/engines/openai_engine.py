"""OpenAIEngine: any OpenAI-compatible chat completions server over HTTP.

vLLM (``vllm serve``), llama.cpp's server, TGI, SGLang and hosted APIs all answer
``POST {base_url}/chat/completions``. One request per prompt. The engine holds one client
and one thread pool, opened on first use and closed by ``stop()``: the prompts of every
`generate` and `agenerate` call go to that pool, and every request of every caller takes one
of its ``max_concurrency`` slots (`Connections`): that many requests in flight on the engine
in this process, whoever sends them (``astream`` uses an ``httpx.AsyncClient`` of its event
loop, in the same slots). ``schema`` goes as ``response_format={"type": "json_schema", ...}``.

Transient failures (connection refused or reset, timeouts, HTTP 429 and 5xx) are retried
``retries`` times with exponential back-off and jitter (`RetryPolicy`, which also honours a
``Retry-After``); other 4xx answers are not retried. A prompt that still fails becomes that
entry's `OpenAIEngineError`, naming the engine, the model and the base URL, with the
server's own message.

httpx and tenacity are imported when the engine is used, never at import time (install them
with the ``llm`` extra).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from .._optional import optional
from ..exceptions import OpenAIEngineError
from ._http import Connections
from ._retry import RetryPolicy
from .base import Prompt, Reply, Sampling, chat_messages

__all__ = ["OpenAIEngine", "OpenAIEngineError"]

_SSE = {"Accept": "text/event-stream"}
_RESERVED = frozenset({"model", "messages", "stream", "response_format"})


def _lib(name: str) -> Any:
    return optional(name, "OpenAIEngine", "llm")


def _server_message(response: Any) -> str:
    """The error message of an OpenAI-style error body, else the body's text (shortened)."""
    try:
        body = response.json()
    except Exception:
        body = None
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    text = str(getattr(response, "text", "") or "").strip()
    return text[:500] or getattr(response, "reason_phrase", "") or "no message"


def _content(body: Any) -> Reply:
    """The reply of a chat completion, with the token counts of its ``usage``."""
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not a chat completion: {str(body)[:300]}") from None
    content = message.get("content")
    if content is None:
        refusal = message.get("refusal")
        raise ValueError(f"the reply has no content{f' (refusal: {refusal})' if refusal else ''}")
    usage = body.get("usage") if isinstance(body, Mapping) else None
    usage = usage if isinstance(usage, Mapping) else {}
    return Reply(
        str(content),
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _delta(data: str) -> str:
    """The text of one SSE ``data:`` event (empty for role-only or final events)."""
    event = json.loads(data)
    if isinstance(event, Mapping) and "error" in event:
        error = event["error"]
        raise ValueError(error.get("message", error) if isinstance(error, Mapping) else error)
    choices = event.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


class OpenAIEngine:
    """An OpenAI-compatible server: ``base_url`` is the API root (``http://host:8000/v1``).

    ``api_key`` is sent as a bearer token (never part of `identity`). ``max_concurrency``:
    requests in flight on this engine in this process, from every caller together (threads,
    event loops, nodes, runners). ``timeout``: seconds a request may take (read/write/pool);
    ``connect_timeout`` bounds connecting, so a down server fails fast. ``retries``: retries
    of a transient failure; ``backoff=(first, most)``: seconds of the first wait and the cap
    of the exponential back-off (jittered).

    Sampling keywords of `generate` / `stream`: ``max_tokens`` (default 256),
    ``temperature`` (default 0), ``top_p`` (default 1), ``seed``, ``stop``; any other keyword
    (``top_k``, ``presence_penalty``, ...) is put into the request body as it is.
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 16,
        retries: int = 3,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.5, 8.0),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.timeout = float(timeout)
        self.connect_timeout = float(min(connect_timeout, timeout))
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.headers = dict(headers or {})
        self._init_state()

    _CONFIG = (
        "base_url", "model", "api_key", "max_concurrency", "retries", "timeout",
        "connect_timeout", "backoff", "headers",
    )  # fmt: skip

    def _init_state(self) -> None:
        self._retry = RetryPolicy(
            retries=self.retries, transient=self._transient, backoff=self.backoff
        )
        self._http = Connections(
            max_concurrency=self.max_concurrency,
            name="OpenAIEngine",
            open_client=lambda: _lib("httpx").Client(**self._client_kwargs()),
        )
        self._entry: dict[str, Any] | None = None  # the model's entry in /models
        self._looked_up = False

    def __getstate__(self) -> dict[str, Any]:
        """Only the configuration travels (to Dask workers): clients and locks are rebuilt."""
        return {name: getattr(self, name) for name in self._CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_url!r}, {self.model!r})"

    def _where(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r})"

    # ----------------------------------------------------------------- clients

    def _client_kwargs(self) -> dict[str, Any]:
        httpx = _lib("httpx")
        headers = {"Accept": "application/json", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout, connect=self.connect_timeout),
            "limits": httpx.Limits(
                max_connections=self.max_concurrency,
                max_keepalive_connections=self.max_concurrency,
            ),
        }

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Check the server (``GET /models``); a clear error within ``connect_timeout``
        seconds if it cannot be reached. Idempotent."""
        client = self._http.client()
        httpx = _lib("httpx")
        try:
            with self._http.slots:
                response = client.get(self._url("models"))
        except httpx.HTTPError as exc:
            raise OpenAIEngineError(
                f"{self._where()}: cannot reach the server ({type(exc).__name__}: {exc}); "
                "is it running?",
                transient=True,
            ) from exc
        if response.status_code in (401, 403):
            raise OpenAIEngineError(
                f"{self._where()}: the server refused the API key (HTTP "
                f"{response.status_code}): {_server_message(response)}",
                status=response.status_code,
            )
        self._remember(response)

    def stop(self) -> None:
        """Close the engine's clients and pool (idempotent); a later call opens new ones."""
        self._http.close()

    def _remember(self, response: Any) -> None:
        """Keep this model's entry of a ``/models`` answer (None when it has none)."""
        entry = None
        if response.status_code == 200:
            try:
                data = response.json().get("data") or []
            except Exception:
                data = []
            for item in data:
                if isinstance(item, Mapping) and item.get("id") == self.model:
                    entry = dict(item)
                    break
        self._entry, self._looked_up = entry, True

    def identity(self) -> dict[str, Any]:
        """Engine kind, base URL, model, and the stable fields of the model's ``/models``
        entry (``id``, ``owned_by``, ``root``) when the server lists it.

        ``created`` is left out on purpose: vLLM and llama.cpp report the time of the
        request there, which would make every run a cache miss. The lookup is made once
        (and again by each `start`), so the identity is the same before and after starting.
        """
        if not self._looked_up:
            try:  # a client of its own: an engine never started holds no connection
                with _lib("httpx").Client(**self._client_kwargs()) as client:
                    self._remember(client.get(self._url("models")))
            except Exception:
                self._entry, self._looked_up = None, True
        identity: dict[str, Any] = {
            "engine": self.kind,
            "base_url": self.base_url,
            "model": self.model,
        }
        for key in ("id", "owned_by", "root"):
            if self._entry is not None and self._entry.get(key) is not None:
                identity[key] = self._entry[key]
        return identity

    # ----------------------------------------------------------------- requests

    def _body(
        self,
        prompt: Prompt,
        *,
        schema: Mapping[str, Any] | None = None,
        stream: bool = False,
        **sampling: Any,
    ) -> dict[str, Any]:
        params = Sampling.of(sampling)
        reserved = sorted(_RESERVED & set(params.extra))
        if reserved:
            raise TypeError(f"OpenAIEngine sets {', '.join(reserved)} itself")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(prompt),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(schema), "strict": True},
            }
        if stream:
            body["stream"] = True
        body.update(params.extra)
        return body

    def _check(self, response: Any, attempt: int) -> None:
        """Raise for an error status (transient for 429 and 5xx)."""
        status = int(response.status_code)
        if status < 400:
            return
        transient = status == 429 or status >= 500
        error = OpenAIEngineError(
            f"{self._where()}: HTTP {status}: {_server_message(response)}",
            status=status,
            transient=transient,
            attempts=attempt,
        )
        try:
            error.retry_after = max(0.0, float(response.headers.get("Retry-After", "")))
        except ValueError:  # absent, or an HTTP date: the back-off decides
            pass
        raise error

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, OpenAIEngineError):
            return exc.transient
        httpx = _lib("httpx")
        return isinstance(
            exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
        )

    def _final(self, exc: BaseException, attempts: int) -> OpenAIEngineError:
        """The entry's error: the engine, the model, the URL, the cause, the attempts."""
        if isinstance(exc, OpenAIEngineError):
            message = str(exc)
            status, transient = exc.status, exc.transient
        else:
            message = f"{self._where()}: {type(exc).__name__}: {exc}"
            status, transient = None, self._transient(exc)
        if transient and attempts > 1:
            message += f" (after {attempts} attempts)"
        error = OpenAIEngineError(message, status=status, transient=transient, attempts=attempts)
        error.__cause__ = exc
        return error

    def _post(self, body: dict[str, Any]) -> str:
        """One completion on the engine's client, in a slot, retried when transient."""
        client = self._http.client()
        attempts = 0

        def once() -> str:
            nonlocal attempts
            attempts += 1
            with self._http.slots:
                response = client.post(self._url("chat/completions"), json=body)
            self._check(response, attempts)
            return _content(response.json())

        try:
            return self._retry.call(once)
        except Exception as exc:
            raise self._final(exc, attempts) from exc

    # ----------------------------------------------------------------- generation

    def _bodies(
        self, prompts: Sequence[Prompt], schema: Mapping[str, Any] | None, sampling: Any
    ) -> tuple[list[str | Exception], dict[int, dict[str, Any]]]:
        """Placeholder results, and the request body of each prompt that has one (a prompt
        that is not a str or chat messages gets its exception; bad keywords fail the call)."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        reserved = sorted(_RESERVED & set(sampling))
        if reserved:
            raise TypeError(f"OpenAIEngine sets {', '.join(reserved)} itself")
        results: list[str | Exception] = []
        bodies: dict[int, dict[str, Any]] = {}
        for i, prompt in enumerate(prompts):
            try:
                bodies[i] = self._body(prompt, schema=schema, **sampling)
                results.append(RuntimeError("no reply"))
            except TypeError as exc:
                results.append(exc)
        return results, bodies

    def generate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """One reply per prompt, in order (a `Reply` with the server's ``usage`` token
        counts); a prompt that fails gets its exception. Each prompt goes to the engine's
        pool, so concurrent calls share it."""
        results, bodies = self._bodies(prompts, schema, sampling)
        replies = self._http.map(self._reply, bodies.values())
        for i, reply in zip(bodies, replies):
            results[i] = reply
        return results

    def _reply(self, body: dict[str, Any]) -> str | Exception:
        try:
            return self._post(body)
        except Exception as exc:
            return exc

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """The async twin of `generate`: the same pool and slots, awaited without holding a
        thread."""
        results, bodies = self._bodies(prompts, schema, sampling)
        replies = await self._http.amap(self._reply, bodies.values())
        for i, reply in zip(bodies, replies):
            results[i] = reply
        return results

    # ----------------------------------------------------------------- streaming

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """The text chunks of one reply (``stream: true``, server-sent events); takes
        `generate`'s keywords, ``schema`` included. The stream holds a slot until it ends.
        Opening the stream is retried like a request; a failure after the first chunk is
        raised."""
        return self._chunks(prompt, sampling, threading.Event())

    def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream`: the same body, on the engine's pool."""
        return self._http.astream(lambda cancel: self._chunks(prompt, sampling, cancel))

    def _chunks(
        self, prompt: Prompt, sampling: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        body = self._body(prompt, stream=True, **sampling)
        client = self._http.client()
        slots = self._http.slots
        attempts = 0

        def open_stream() -> Any:
            nonlocal attempts
            attempts += 1
            slots.acquire()
            try:
                request = client.build_request(
                    "POST", self._url("chat/completions"), json=body, headers=_SSE
                )
                response = client.send(request, stream=True)
                try:
                    if response.status_code >= 400:
                        response.read()
                    self._check(response, attempts)
                except BaseException:
                    response.close()
                    raise
            except BaseException:
                slots.release()
                raise
            return response

        try:
            response = self._retry.call(open_stream)
        except Exception as exc:
            raise self._final(exc, attempts) from exc
        try:
            for line in response.iter_lines():
                if cancel.is_set():
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                text = _delta(data)
                if text:
                    yield text
        finally:
            response.close()
            slots.release()
