"""A small in-process stand-in for a vLLM server, for the client's rare cases (garbage, timeouts)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streams
    server: FakeServer

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers), None))
        self.server.script(self, None)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        try:
            self.server.script(self, body)
        except (BrokenPipeError, ConnectionResetError):
            self.server.disconnected.set()  # the client closed the stream
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, text: str, content_type: str = "application/json") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, payload: object) -> None:
        self.send(f"data: {json.dumps(payload)}\n\n")

    def end_stream(self) -> None:
        self.send("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: Callable[[Handler, dict | None], None] = vllm_stream([[11], [12, 13], [14]])
        self.requests: list[tuple[str, dict, dict | None]] = []
        self.connections = 0
        self.disconnected = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def chunk(ids: list[int], finish: str | None = None, echo: list[int] | None = None) -> dict:
    choice = {"index": 0, "text": "", "finish_reason": finish, "token_ids": ids}
    if echo is not None:
        choice["prompt_token_ids"] = echo
    return {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}


def vllm_stream(
    pieces: list[list[int]], finish: str = "length", cached: int = 0, delay_s: float = 0.0
) -> Callable[[Handler, dict | None], None]:
    """A stream as vLLM sends it: the prompt echoed in the first chunk, the finish reason in
    the last, then the usage."""

    def script(handler: Handler, body: dict | None) -> None:
        assert body is not None
        handler.start_stream()
        for number, ids in enumerate(pieces):
            time.sleep(delay_s)
            last = number == len(pieces) - 1
            echo = body["prompt"] if number == 0 else None
            handler.event(chunk(ids, finish if last else None, echo))
        usage = {"prompt_tokens": len(body["prompt"]), "prompt_tokens_details": None}
        if cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        handler.event({"id": "cmpl-1", "choices": [], "usage": usage})
        handler.end_stream()

    return script


def endless(handler: Handler, body: dict | None) -> None:
    """A token every 20 ms until the client goes away."""
    handler.start_stream()
    for token in range(1, 10_000):
        handler.event(chunk([token]))
        time.sleep(0.02)


def headers_then_nothing(handler: Handler, body: dict | None) -> None:
    handler.start_stream()
    time.sleep(10)
