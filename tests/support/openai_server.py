"""A loopback OpenAI-compatible server backed by a real model through TransformersEngine.

Run as a subprocess by the tests::

    python tests/support/openai_server.py --port 0 --model-dir DIR --name NAME

It loads the model, listens on 127.0.0.1, prints ``PORT <n>`` and serves until its standard
input closes (the test process went away) or it is terminated.

- ``GET /v1/models``, ``GET /health``
- ``POST /v1/chat/completions``: ``messages``, ``temperature``, ``top_p``, ``max_tokens``,
  ``seed``, ``stop``, ``top_k``; ``response_format`` json_schema -> ``schema=``;
  ``stream: true`` answers server-sent events (``data: {...}`` chunks, then ``[DONE]``).
- ``GET /debug/fail?n=K&status=503[&match=TEXT][&retry_after=S]``: the next K completion
  requests (whose body contains TEXT, when given) fail with that status.
- ``GET /debug/delay?seconds=S``: every completion request first sleeps S seconds.
- ``GET /debug/stats``: completion requests, peak concurrency, bodies received, TCP
  connections accepted;
  ``GET /debug/reset`` clears the stats, the failures and the delay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class State:
    def __init__(self, engine: Any, name: str, root: str) -> None:
        self.engine = engine
        self.name = name
        self.root = root
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.in_flight = 0
        self.peak = 0
        self.bodies: list[Any] = []
        self.fail_left = 0
        self.fail_status = 503
        self.fail_match: str | None = None
        self.retry_after: str | None = None
        self.delay = 0.0


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    state: State

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.state.lock:  # one accepted TCP connection (it may carry many requests)
            self.state.connections += 1
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ helpers

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = "BadRequestError" if status < 500 else "InternalServerError"
        body = {"error": {"message": message, "type": kind, "code": status}}
        self._send_json(status, body, headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # ------------------------------------------------------------------ GET

    def do_GET(self) -> None:
        state = self.server.state
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        if path in ("/v1/models", "/models"):
            entry = {
                "id": state.name,
                "object": "model",
                "created": int(time.time()),  # like vLLM and llama.cpp: the time of the request
                "owned_by": "hypernodes-test",
                "root": state.root,
            }
            self._send_json(200, {"object": "list", "data": [entry]})
        elif path == "/health":
            self._send_json(200, {"status": "ok"})
        elif path == "/debug/fail":
            with state.lock:
                state.fail_left = int(query.get("n", "1"))
                state.fail_status = int(query.get("status", "503"))
                state.fail_match = query.get("match")
                state.retry_after = query.get("retry_after")
            self._send_json(200, {"ok": True})
        elif path == "/debug/delay":
            with state.lock:
                state.delay = float(query.get("seconds", "0"))
            self._send_json(200, {"ok": True})
        elif path == "/debug/stats":
            with state.lock:
                stats = {
                    "requests": state.requests,
                    "peak": state.peak,
                    "in_flight": state.in_flight,
                    "connections": state.connections,
                    "bodies": list(state.bodies),
                }
            self._send_json(200, stats)
        elif path == "/debug/reset":
            with state.lock:
                state.reset()
            self._send_json(200, {"ok": True})
        else:
            self._error(404, f"no route {url.path}")

    # ------------------------------------------------------------------ POST

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if urlparse(self.path).path.rstrip("/") not in (
            "/v1/chat/completions",
            "/chat/completions",
        ):
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "the body is not JSON")
            return
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            state.peak = max(state.peak, state.in_flight)
            state.bodies.append(body)
            fail = state.fail_left > 0 and (
                state.fail_match is None or state.fail_match in raw.decode("utf-8", "replace")
            )
            if fail:
                state.fail_left -= 1
            status, retry_after, delay = state.fail_status, state.retry_after, state.delay
        try:
            if delay:
                time.sleep(delay)
            if fail:
                headers = {"Retry-After": retry_after} if retry_after else None
                self._error(status, f"injected failure (HTTP {status})", headers)
                return
            self._complete(body)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _sampling(self, body: dict[str, Any]) -> dict[str, Any]:
        sampling: dict[str, Any] = {}
        for key in ("temperature", "top_p", "max_tokens", "seed", "stop", "top_k"):
            if body.get(key) is not None:
                sampling[key] = body[key]
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            sampling["schema"] = fmt["json_schema"]["schema"]
        return sampling

    def _complete(self, body: Any) -> None:
        state = self.server.state
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(400, "'messages' is required and must be a list")
            return
        if body.get("model") != state.name:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return
        if body.get("n", 1) != 1:
            self._error(400, "only n=1 is supported")
            return
        messages = body["messages"]
        sampling = self._sampling(body)
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if body.get("stream"):
            self._stream(messages, sampling, cid, created)
            return
        try:
            (reply,) = state.engine.generate([messages], **sampling)
        except ValueError as exc:
            self._error(400, str(exc))
            return
        except Exception as exc:
            self._error(500, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(reply, Exception):
            self._error(400 if isinstance(reply, ValueError) else 500, str(reply))
            return
        self._send_json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": state.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": getattr(reply, "prompt_tokens", None) or 0,
                    "completion_tokens": getattr(reply, "completion_tokens", None) or 0,
                    "total_tokens": (getattr(reply, "prompt_tokens", None) or 0)
                    + (getattr(reply, "completion_tokens", None) or 0),
                },
            },
        )

    def _stream(self, messages: Any, sampling: dict[str, Any], cid: str, created: int) -> None:
        state = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": state.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

        event({"role": "assistant", "content": ""})
        try:
            for text in state.engine.stream(messages, **sampling):
                event({"content": text})
        except Exception as exc:
            error = {"error": {"message": f"{type(exc).__name__}: {exc}", "code": 500}}
            self._chunk(f"data: {json.dumps(error)}\n\n".encode())
        else:
            event({}, "stop")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # the last chunk of a chunked body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from hypernodes_chain.engines import TransformersEngine

    engine = TransformersEngine(args.model_dir)
    engine.start()
    server = Server((args.host, args.port), Handler)
    server.state = State(engine, args.name, str(args.model_dir))

    def watch_stdin() -> None:  # the parent closed our stdin (or died): shut down
        try:
            sys.stdin.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
