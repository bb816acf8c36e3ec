"""`OTLPReceiver`: a loopback OTLP/HTTP trace receiver that decodes what it is sent.

It listens on 127.0.0.1 (a free port) in a thread of the test process and answers
``POST /v1/traces`` as a collector does: the body (gzip or not) is decoded as the protobuf
``ExportTraceServiceRequest`` of ``opentelemetry-proto``, the wire format itself, and its
spans are kept in arrival order::

    with OTLPReceiver() as receiver:
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint)
        ...
        spans = receiver.wait_for(41)
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OTLPReceiver"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.receiver.add(request)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


class OTLPReceiver:
    """Receives OTLP/HTTP trace exports on 127.0.0.1; ``spans`` are the decoded spans
    (``opentelemetry.proto.trace.v1.trace_pb2.Span``), ``requests`` the export count."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._changed = threading.Condition()
        self.spans: list[Any] = []
        self.requests = 0
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1/traces"

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self._changed:
            self.requests += 1
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
            self._changed.notify_all()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Any]:
        """The spans, once at least ``n`` have arrived (AssertionError after ``timeout``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.spans) >= n, timeout):
                msg = f"the receiver got {len(self.spans)} spans, expected {n}"
                raise AssertionError(msg)
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> OTLPReceiver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
