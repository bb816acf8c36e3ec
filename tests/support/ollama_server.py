"""A loopback server speaking the subset of the Ollama HTTP API that the ``ollama`` client
uses, backed by a real (tiny) Hugging Face model through `TransformersEngine`, or by no model.

    python tests/support/ollama_server.py --port 0 [--model-dir DIR] --name NAME
        [--fail-first N] [--delay SECONDS] [--slow-every K] [--slow-factor F]

prints its port on stdout once it listens. Without ``--model-dir`` a reply is a short text
made from the prompt (for benchmarks of the client side: the server then answers many
requests at once, as a GPU-backed server does). Endpoints: ``POST /api/generate``, ``POST
/api/chat`` (NDJSON streaming when ``stream`` is true; ``format`` a JSON schema; ``options``
temperature/top_p/num_predict/seed/stop; an empty request loads the model, ``keep_alive`` 0
unloads it), ``POST /api/show``, ``GET /api/tags``, ``GET /api/version``; for tests: ``GET
/debug/stats`` (requests per path, fields sent, formats, options and keep_alive values
received, loads, unloads, peak concurrent generate/chat requests, TCP connections accepted),
``GET /debug/reset``, ``GET /debug/fail?n=N&status=503`` (the next N generate/chat requests
fail with that status), ``GET /debug/delay?s=SECONDS[&slow_every=K&slow_factor=F]`` (each
generate/chat request waits that long first; one prompt in K, chosen by a hash of the prompt,
so the same prompts always get the same delays, F times as long), ``GET /debug/window/start``
and ``GET /debug/window`` (requests in flight since the window started: the peak and the
time-weighted mean, integrated exactly at every change of the count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse
import zlib
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_NUM_PREDICT = 64


def parse_keep_alive(value: Any) -> float:
    """Seconds from Ollama's ``keep_alive``: a number (seconds) or a Go duration string
    (``"5m"``, ``"1h30m"``, ``"0"``); negative keeps the model loaded for ever."""
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid keep_alive duration {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class State:
    """The model, its load state and the counters the tests read."""

    def __init__(self, model_dir: Path | None, name: str, fail_first: int) -> None:
        self.name = name if ":" in name else f"{name}:latest"
        self.model_dir = model_dir
        self.engine: Any = None
        if model_dir is not None:
            from hypernodes_chain.engines import TransformersEngine

            self.engine = TransformersEngine(model_dir)
            self.digest = self.engine.identity()["revision"].removeprefix("sha256:")
        else:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()
        self.lock = threading.Lock()
        self.loaded = False
        self.fail_next = fail_first
        self.fail_status = 503
        self.delay = 0.0
        self.slow_every = 0
        self.slow_factor = 1.0
        self.in_flight = 0
        self.reset()
        self.start_window()

    def reset(self) -> None:
        self.requests: dict[str, int] = {}
        self.fields: dict[str, list[str]] = {}
        self.formats: list[Any] = []
        self.options: list[dict[str, Any]] = []
        self.keep_alive: list[Any] = []
        self.loads = 0
        self.unloads = 0
        self.peak = 0
        self.failed = 0
        self.connections = 0

    def start_window(self) -> None:
        """Start measuring requests in flight (call with the lock held, or before serving)."""
        now = time.perf_counter()
        self.window_start = self.changed = now
        self.window_peak = self.in_flight
        self.area = 0.0  # integral of in_flight over time since window_start

    def flight(self, step: int) -> None:
        """In flight goes up or down by one (call with the lock held)."""
        now = time.perf_counter()
        self.area += self.in_flight * (now - self.changed)
        self.changed = now
        self.in_flight += step
        self.peak = max(self.peak, self.in_flight)
        self.window_peak = max(self.window_peak, self.in_flight)

    def window(self) -> dict[str, Any]:
        now = time.perf_counter()
        seconds = now - self.window_start
        area = self.area + self.in_flight * (now - self.changed)
        mean = area / seconds if seconds > 0 else 0.0
        return {"seconds": seconds, "peak": self.window_peak, "mean": mean}

    def delay_of(self, body: dict[str, Any]) -> float:
        """The reply time of a request: the base delay, ``slow_factor`` times as long for
        one prompt in ``slow_every`` (by a hash of the prompt: the same prompt, the same time)."""
        if not self.delay:
            return 0.0
        if self.slow_every > 1:
            prompt = json.dumps(body.get("prompt") or body.get("messages") or "")
            if zlib.crc32(prompt.encode()) % self.slow_every == 0:
                return self.delay * self.slow_factor
        return self.delay

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "fields": self.fields,
            "formats": self.formats,
            "options": self.options,
            "keep_alive": self.keep_alive,
            "loads": self.loads,
            "unloads": self.unloads,
            "peak": self.peak,
            "failed": self.failed,
            "loaded": self.loaded,
            "fail_next": self.fail_next,
            "connections": self.connections,
        }

    def knows(self, model: str) -> bool:
        return (model if ":" in model else f"{model}:latest") == self.name

    def load(self) -> None:
        with self.lock:
            if not self.loaded:
                if self.engine is not None:
                    self.engine.start()
                self.loaded = True
                self.loads += 1

    def unload(self) -> None:
        with self.lock:
            if self.loaded:
                if self.engine is not None:
                    self.engine.stop()
                self.loaded = False
                self.unloads += 1

    def generate(self, prompt: Any, schema: Any, sampling: dict[str, Any]) -> Any:
        """The reply of the model, or without one a short text made from the prompt."""
        if self.engine is not None:
            [reply] = self.engine.generate([prompt], schema=schema, **sampling)
            return reply
        from hypernodes_chain.engines.base import Reply

        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        reply = "{}" if schema is not None else f"reply to {text[:40]}"
        return Reply(reply, prompt_tokens=len(text.split()), completion_tokens=len(reply.split()))

    def stream(self, prompt: Any, schema: Any, sampling: dict[str, Any]) -> Any:
        if self.engine is not None:
            return self.engine.stream(prompt, schema=schema, **sampling)
        reply = self.generate(prompt, schema, sampling)
        return [reply[i : i + 8] for i in range(0, len(reply), 8)]

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "safetensors",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "tiny",
            "quantization_level": "F32",
        }


def sampling_of(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama options as TransformersEngine sampling keywords."""
    sampling: dict[str, Any] = {}
    predict = int(options.get("num_predict", DEFAULT_NUM_PREDICT))
    sampling["max_tokens"] = 256 if predict < 0 else max(1, predict)
    for key in ("temperature", "top_p", "seed"):
        if options.get(key) is not None:
            sampling[key] = options[key]
    if options.get("stop"):
        sampling["stop"] = list(options["stop"])
    return sampling


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ replies

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, body: Any) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("the request body must be a JSON object")
        return value

    def _count(self, path: str) -> None:
        state = self.server.state
        with state.lock:
            state.requests[path] = state.requests.get(path, 0) + 1

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        state = self.server.state
        self._count(url.path)
        if url.path == "/api/version":
            self._send_json(200, {"version": "0.12.0"})
        elif url.path == "/api/tags":
            self._send_json(200, {"models": [self._tag()]})
        elif url.path == "/api/ps":
            self._send_json(200, {"models": [self._tag()] if state.loaded else []})
        elif url.path == "/debug/stats":
            with state.lock:
                self._send_json(200, state.stats())
        elif url.path == "/debug/reset":
            with state.lock:
                state.reset()
                state.fail_next, state.delay = 0, 0.0
                state.slow_every, state.slow_factor = 0, 1.0
            self._send_json(200, {"ok": True})
        elif url.path == "/debug/window/start":
            with state.lock:
                state.start_window()
            self._send_json(200, {"ok": True})
        elif url.path == "/debug/window":
            with state.lock:
                self._send_json(200, state.window())
        elif url.path == "/debug/fail":
            with state.lock:
                state.fail_next = int(query.get("n", "1"))
                state.fail_status = int(query.get("status", "503"))
            self._send_json(200, {"ok": True})
        elif url.path == "/debug/delay":
            with state.lock:
                state.delay = float(query.get("s", "0"))
                state.slow_every = int(query.get("slow_every", "0"))
                state.slow_factor = float(query.get("slow_factor", "1"))
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": f"404 page not found: {url.path}"})

    def _tag(self) -> dict[str, Any]:
        state = self.server.state
        folder = state.model_dir
        size = (
            0 if folder is None else sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        )
        return {
            "name": state.name,
            "model": state.name,
            "modified_at": _now(),
            "size": size,
            "digest": state.digest,
            "details": state.details(),
        }

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        state = self.server.state
        self._count(path)
        try:
            body = self._body()
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        if path == "/api/show":
            model = str(body.get("model") or body.get("name") or "")
            if not state.knows(model):
                self._send_json(404, {"error": f"model '{model}' not found"})
                return
            self._send_json(
                200,
                {
                    "modelfile": f"FROM {state.model_dir or state.name}\n",
                    "parameters": "",
                    "template": "{{ .Prompt }}",
                    "details": state.details(),
                    "model_info": {"general.architecture": "llama"},
                    "capabilities": ["completion"],
                    "modified_at": _now(),
                },
            )
        elif path in ("/api/generate", "/api/chat"):
            with state.lock:
                state.flight(+1)
            try:
                self._generate(path, body)
            finally:
                with state.lock:
                    state.flight(-1)
        else:
            self._send_json(404, {"error": f"404 page not found: {path}"})

    def _generate(self, path: str, body: dict[str, Any]) -> None:
        state = self.server.state
        chat = path == "/api/chat"
        with state.lock:
            state.fields.setdefault(path, [])
            for key in body:
                if key not in state.fields[path]:
                    state.fields[path].append(key)
            if "format" in body:
                state.formats.append(body["format"])
            if "options" in body:
                state.options.append(body["options"])
            if "keep_alive" in body:
                state.keep_alive.append(body["keep_alive"])
            failing = state.fail_next > 0
            if failing:
                state.fail_next -= 1
                state.failed += 1
            delay = state.delay_of(body)
        if delay:
            time.sleep(delay)
        if failing:
            self._send_json(state.fail_status, {"error": "injected failure"})
            return
        model = str(body.get("model") or "")
        if not state.knows(model):
            self._send_json(404, {"error": f"model '{model}' not found"})
            return
        try:
            keep_alive = parse_keep_alive(body["keep_alive"]) if "keep_alive" in body else 300.0
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        stream = bool(body.get("stream", True))
        base = {"model": model, "created_at": _now()}
        if chat:
            messages = body.get("messages") or []
            empty = not messages
            prompt: Any = [{"role": m["role"], "content": m.get("content", "")} for m in messages]
        else:
            empty = not body.get("prompt")
            prompt = body.get("prompt") or ""
            if body.get("system"):
                prompt = [
                    {"role": "system", "content": body["system"]},
                    {"role": "user", "content": prompt},
                ]
        if empty:  # a load (or, with keep_alive 0, an unload) request
            if keep_alive == 0:
                state.unload()
                reason = "unload"
            else:
                state.load()
                reason = "load"
            reply = {**base, "done": True, "done_reason": reason}
            reply.update(
                {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
            )
            if stream:
                self._start_stream()
                self._chunk(reply)
                self._end_stream()
            else:
                self._send_json(200, reply)
            return
        state.load()
        sampling = sampling_of(dict(body.get("options") or {}))
        schema = body.get("format")
        if schema == "json":
            schema = {"type": "object"}
        if schema is not None and not isinstance(schema, dict):
            schema = None
        started = time.perf_counter_ns()

        def part(text: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {**base, "done": done}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            if done:
                out.update(done_reason="stop", total_duration=time.perf_counter_ns() - started)
            return out

        if stream:
            self._start_stream()
            try:
                for chunk in state.stream(prompt, schema, sampling):
                    self._chunk(part(chunk, False))
            except Exception as exc:
                self._chunk({"error": f"{type(exc).__name__}: {exc}"})
            else:
                self._chunk(part("", True))
            self._end_stream()
        else:
            reply = state.generate(prompt, schema, sampling)
            if isinstance(reply, Exception):
                status = 400 if isinstance(reply, ValueError | TypeError) else 500
                self._send_json(status, {"error": f"{type(reply).__name__}: {reply}"})
            else:
                done = part(reply, True)
                for field, attr in (("prompt_eval_count", "prompt_tokens"),
                                    ("eval_count", "completion_tokens")):  # fmt: skip
                    if getattr(reply, attr, None) is not None:
                        done[field] = getattr(reply, attr)
                self._send_json(200, done)
        if keep_alive == 0:
            state.unload()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: State) -> None:
        super().__init__(address, Handler)
        self.state = state

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.state.lock:  # one accepted TCP connection (it may carry many requests)
            self.state.connections += 1
        super().process_request(request, client_address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, help="without one: replies made from prompts")
    parser.add_argument("--name", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--slow-every", type=int, default=0, help="one prompt in K is slow")
    parser.add_argument("--slow-factor", type=float, default=1.0, help="how much slower")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.model_dir is not None:
        import torch
        import transformers  # noqa: F401  (imported before listening: the first request is fast)

        torch.set_num_threads(1)
    state = State(args.model_dir, args.name, args.fail_first)
    state.delay, state.slow_every, state.slow_factor = args.delay, args.slow_every, args.slow_factor
    server = Server((args.host, args.port), state)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    main()
