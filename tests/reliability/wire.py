"""A raw-bytes LSP client for the real server: it can send broken frames, and reads answers strictly."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

SERVER = [sys.executable, "-m", "fim_lsp", "serve", "--model", "demo", "--quantization", "none"]
# The server's frames, exactly: anything else from it is a bug.
HEADER = re.compile(rb"Content-Length: (\d+)\r\n(?:Content-Type: [^\r\n]*\r\n)?\r\n")
PREFIX = 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    return '


def frame(message: Any) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def request(msg_id: Any, method: str, params: Any = None) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def notification(method: str, params: Any = None) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def initialize(msg_id: Any = 0) -> dict:
    return request(msg_id, "initialize", {"processId": None, "capabilities": {}})


def did_open(uri: str, text: str) -> dict:
    document = {"uri": uri, "languageId": "python", "version": 1, "text": text}
    return notification("textDocument/didOpen", {"textDocument": document})


def inline(msg_id: Any, uri: str, line: int, character: int) -> dict:
    params = {
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
        "context": {"triggerKind": 1},
    }
    return request(msg_id, "textDocument/inlineCompletion", params)


def end_of(text: str) -> tuple[int, int]:
    """The LSP position at the end of `text` (ASCII only: characters are UTF-16 units)."""
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


def key(msg_id: Any) -> tuple[str, Any]:
    """An id as a dict key: 1 and "1" (and 1 and true) are different ids."""
    return type(msg_id).__name__, msg_id


class Connection:
    """Frames read from the server's output on a thread; answers kept by id, the rest in order."""

    def __init__(self, output: BinaryIO | socket.socket, send: Callable[[bytes], None]) -> None:
        self.output = output
        self.send_bytes = send
        self.answers: dict[tuple[str, Any], list[dict]] = {}
        self.answered_at: dict[tuple[str, Any], float] = {}  # time.monotonic() of the first answer
        self.null_answers: list[dict] = []  # error answers with "id": null
        self.notifications: list[dict] = []
        self.frame_errors: list[str] = []
        self.arrived = threading.Condition()
        self.ended = threading.Event()
        threading.Thread(target=self.read, daemon=True).start()

    def receive(self, count: int) -> bytes:
        if isinstance(self.output, socket.socket):
            return self.output.recv(count)
        return self.output.read1(count)  # type: ignore[attr-defined]

    def read(self) -> None:
        buffer = b""
        try:
            while True:
                while (match := HEADER.match(buffer)) and len(buffer) >= match.end() + int(
                    match.group(1)
                ):
                    end = match.end() + int(match.group(1))
                    self.take(json.loads(buffer[match.end() : end]))
                    buffer = buffer[end:]
                if not b"Content-Length: ".startswith(buffer[:16]):
                    self.frame_errors.append(repr(buffer[:200]))
                    return
                chunk = self.receive(65536)
                if not chunk:
                    return
                buffer += chunk
        except OSError:
            return
        finally:
            self.ended.set()
            with self.arrived:
                self.arrived.notify_all()

    def take(self, message: dict) -> None:
        with self.arrived:
            if "method" in message and "id" in message:  # a request to the client: answer it
                self.send_bytes(frame({"jsonrpc": "2.0", "id": message["id"], "result": None}))
            elif "method" in message:
                self.notifications.append(message)
            elif message.get("id") is None:
                self.null_answers.append(message)
            else:
                self.answers.setdefault(key(message["id"]), []).append(message)
                self.answered_at.setdefault(key(message["id"]), time.monotonic())
            self.arrived.notify_all()

    def send(self, *messages: Any) -> None:
        self.send_bytes(b"".join(frame(message) for message in messages))

    def wait(self, condition: Callable[[], bool], timeout: float = 30) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: condition() or self.ended.is_set(), timeout)

    def answer(self, msg_id: Any, timeout: float = 30) -> dict:
        """The one answer to `msg_id` (waits for it)."""
        self.wait(lambda: key(msg_id) in self.answers, timeout)
        answers = self.answers.get(key(msg_id))
        assert answers, f"no answer to {msg_id!r} within {timeout} s"
        assert len(answers) == 1, f"{len(answers)} answers to {msg_id!r}: {answers}"
        return answers[0]

    def call(self, msg_id: Any, method: str, params: Any = None, timeout: float = 30) -> dict:
        self.send(request(msg_id, method, params))
        return self.answer(msg_id, timeout)

    def wait_ready(self, ids: Iterator[int], timeout: float = 60) -> None:
        """Poll fimLsp/status until the model is loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call(next(ids), "fimLsp/status")["result"]["state"]
            assert state != "error", "the demo model failed to load"
            if state == "ready":
                return
            time.sleep(0.1)
        raise TimeoutError("the demo model did not load")


class StdioServer(Connection):
    """`fim-lsp serve` on stdio, with its log in `log_path`."""

    def __init__(self, log_path: Path, *flags: str, command: list[str] = SERVER) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*command, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.process.stdin and self.process.stdout
        super().__init__(cast(BinaryIO, self.process.stdout), self.write)

    def write(self, data: bytes) -> None:
        assert self.process.stdin
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def initialize(self) -> dict:
        return self.call(0, "initialize", initialize()["params"])

    def rss_mib(self) -> float:
        """The server's resident memory now, in MiB (Linux's /proc: no dependency for it)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) / 1024

    def exit_code(self, timeout: float = 10) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def __enter__(self) -> StdioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def counter(start: int = 1) -> Iterator[int]:
    return itertools.count(start)
