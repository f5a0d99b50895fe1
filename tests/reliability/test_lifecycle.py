"""The real server through LSP's lifecycle: before initialize, after shutdown, exit codes, hang-ups."""

from __future__ import annotations

import re
import subprocess
import time

from tests.reliability.wire import (
    SERVER,
    StdioServer,
    counter,
    frame,
    initialize,
    notification,
    request,
)

NOT_INITIALIZED, INVALID_REQUEST = -32002, -32600


def code(answer: dict) -> int:
    return answer["error"]["code"]


def test_requests_are_refused_before_initialize_and_after_shutdown_then_exit_is_0(tmp_path):
    with StdioServer(tmp_path / "server.log") as server:
        ids = counter(1)
        for method in ["fimLsp/status", "textDocument/inlineCompletion", "shutdown", "nope"]:
            assert code(server.call(next(ids), method, {})) == NOT_INITIALIZED
        server.send(notification("initialized", {}))  # dropped: it would start the model loading
        assert "capabilities" in server.initialize()["result"]
        assert server.call(next(ids), "fimLsp/status")["result"]["state"] == "starting"
        assert code(server.call(next(ids), "initialize", initialize()["params"])) == INVALID_REQUEST

        answer = server.call(next(ids), "shutdown")
        assert "error" not in answer and answer["result"] is None
        for method in ["fimLsp/status", "shutdown", "initialize", "textDocument/completion"]:
            assert code(server.call(next(ids), method, {})) == INVALID_REQUEST
        server.send(notification("initialized", {}))  # dropped too
        server.send(notification("exit"))
        assert server.exit_code() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_exit_without_shutdown_is_1(tmp_path):
    with StdioServer(tmp_path / "server.log") as server:
        server.initialize()
        server.send(notification("exit"))
        assert server.exit_code() == 1


def start_and_initialize(tmp_path) -> subprocess.Popen:
    """A server with the model loading (no reader thread: the test closes the pipes itself)."""
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    assert process.stdin and process.stdout
    process.stdin.write(frame(initialize("init")) + frame(notification("initialized", {})))
    process.stdin.flush()
    header = process.stdout.readline() + process.stdout.readline() + process.stdout.readline()
    length = re.match(rb"Content-Length: (\d+)\r\n", header)
    assert length, header
    assert b'"id": "init"' in process.stdout.read(int(length.group(1)))
    return process


def test_the_server_ends_within_a_second_when_the_client_closes_our_stdout(tmp_path):
    process = start_and_initialize(tmp_path)
    assert process.stdout and process.stdin
    process.stdin.write(frame(request(1, "fimLsp/status")))  # stdin stays open
    process.stdin.flush()
    closed = time.monotonic()
    process.stdout.close()
    try:
        process.wait(timeout=10)
    finally:
        process.kill()
    assert time.monotonic() - closed < 1.0


def test_the_server_ends_within_a_second_when_the_client_closes_our_stdin(tmp_path):
    process = start_and_initialize(tmp_path)
    assert process.stdin
    closed = time.monotonic()
    process.stdin.close()
    try:
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
    assert time.monotonic() - closed < 1.0
