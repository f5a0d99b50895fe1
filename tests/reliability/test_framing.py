"""The real server after broken frames: each is dropped, and the 20 requests after it answered."""

from __future__ import annotations

import json

import pytest

from tests.reliability.wire import StdioServer, counter, frame, key, notification, request

IDS = counter(1000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with StdioServer(tmp_path_factory.mktemp("framing") / "server.log") as server:
        server.initialize()
        server.send(notification("initialized", {}))
        yield server


def status(msg_id: int) -> dict:
    return request(msg_id, "fimLsp/status")


def body(msg_id: int) -> bytes:
    return json.dumps(status(msg_id)).encode()


def told_about_framing(server: StdioServer) -> int:
    return sum(
        "not an LSP message" in message["params"]["message"]
        for message in server.notifications
        if message["method"] == "window/showMessage"
    )


@pytest.mark.parametrize(
    "header",
    [b"content-length: %d\r\n\r\n", b"Content-Length: %d\n\n", b"CONTENT-LENGTH:%d  \n\r\n"],
    ids=["lower-case", "LF only", "upper-case, spaces, mixed line ends"],
)
def test_frames_spelled_differently_are_read(server, header):
    msg_id = next(IDS)
    later = [next(IDS) for _ in range(20)]
    server.send_bytes(
        header % len(body(msg_id)) + body(msg_id) + b"".join(map(frame, map(status, later)))
    )
    assert "result" in server.answer(msg_id)
    assert all("result" in server.answer(later_id) for later_id in later)
    assert told_about_framing(server) <= 1


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: 1000000000000\r\n\r\n",
        b"Content-Length: " + b"7" * 5000 + b"\r\n\r\n",
        b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n",  # no length
        b"Content-Length: twelve\r\n\r\n",
        b"\x00garbage\xff\r\nmore garbage",  # garbage between frames, then a body
    ],
    ids=["10^12", "5000 digits", "no length", "not a number", "garbage"],
)
def test_a_broken_frame_is_dropped_and_the_next_20_requests_answered(server, header):
    dropped = next(IDS)
    later = [next(IDS) for _ in range(20)]
    # The next frame follows the broken one directly, as a client writes them.
    server.send_bytes(header + body(dropped) + b"".join(map(frame, map(status, later))))
    assert all("result" in server.answer(later_id) for later_id in later)
    assert server.process.poll() is None
    assert key(dropped) not in server.answers
    assert told_about_framing(server) == 1  # the user is told once, the log has each
