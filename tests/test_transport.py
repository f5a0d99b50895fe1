"""The frame reader on hostile input, the TCP address rules and the stdio writer."""

from __future__ import annotations

import json
import os
import random

import pytest

from fim_lsp.transport import (
    CHUNK_BYTES,
    MAX_CONTENT_LENGTH,
    MAX_HEADER_BYTES,
    FdWriter,
    FrameReader,
    Skipped,
    tcp_address,
)

BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "shutdown"}).encode()
OTHER = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "fimLsp/status"}).encode()


def frame(body: bytes, header: bytes = b"Content-Length: %d\r\n\r\n") -> bytes:
    return header % len(body) + body


def read(*chunks: bytes) -> list[bytes | Skipped]:
    reader = FrameReader()
    return [item for chunk in chunks for item in reader.feed(chunk)]


def bodies(items: list[bytes | Skipped]) -> list[bytes]:
    return [item for item in items if isinstance(item, bytes)]


def reasons(items: list[bytes | Skipped]) -> list[str]:
    return [item.reason for item in items if isinstance(item, Skipped)]


def test_frames_in_one_chunk_or_byte_by_byte():
    stream = frame(BODY) + frame(OTHER) + frame(b"")
    assert read(stream) == [BODY, OTHER, b""]
    assert read(*(stream[i : i + 1] for i in range(len(stream)))) == [BODY, OTHER, b""]


@pytest.mark.parametrize(
    "header",
    [
        b"content-length: %d\r\n\r\n",
        b"CONTENT-LENGTH:%d\r\n\r\n",
        b"Content-Length: %d\n\n",  # LF alone
        b"Content-Length: %d\r\n\n",
        b"Content-Length: %d  \r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n",
        b"Content-Type: application/vscode-jsonrpc\nX-Other: 1\ncontent-length: %d\n\n",
    ],
)
def test_header_spellings_that_are_read(header):
    assert read(frame(BODY, header) + frame(OTHER)) == [BODY, OTHER]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"Content-Length: 1000000000000\r\n\r\n" + BODY, "over the limit"),
        (b"Content-Length: " + b"9" * 30 + b"\r\n\r\n" + BODY, "not a number"),
        (b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n" + BODY, "line over"),
        (b"Content-Length: -5\r\n\r\n" + BODY, "not a number"),
        (b"Content-Length: 5x\r\n\r\n" + BODY, "not a number"),
        (b"Content-Length:\r\n\r\n" + BODY, "not a number"),
        (b"Content-Type: application/vscode-jsonrpc\r\n\r\n" + BODY, "not an LSP message"),
        (BODY, "not an LSP message"),  # a body with no header at all
        (b"garbage \x00\xff between frames\r\n", "not an LSP message"),
        (b"Content-Length: 5\r\n" + BODY, "instead of a blank line"),
    ],
)
def test_a_bad_frame_is_dropped_once_and_the_next_one_read(bad, reason):
    # The next frame follows the bad one's bytes directly, as a client writes them.
    items = read(frame(BODY) + bad + frame(OTHER) + frame(OTHER))
    assert bodies(items) == [BODY, OTHER, OTHER]
    assert len(reasons(items)) == 1 and reason in reasons(items)[0]


def test_the_length_limit_is_inclusive_and_nothing_is_allocated_for_a_refused_one():
    accepted = FrameReader()
    assert accepted.feed(b"Content-Length: %d\r\n\r\n" % MAX_CONTENT_LENGTH) == []
    refused = FrameReader()
    (skipped,) = refused.feed(b"Content-Length: %d\r\n\r\n" % (MAX_CONTENT_LENGTH + 1))
    assert "over the limit" in skipped.reason
    for _ in range(32):  # 2 MiB of its "body" pass through a bounded buffer
        assert refused.feed(os.urandom(CHUNK_BYTES).replace(b"\n", b" ")) == []
        assert len(refused.buffer) <= 2 * MAX_HEADER_BYTES + CHUNK_BYTES
    assert refused.feed(frame(OTHER)) == [OTHER]


def test_a_header_line_without_an_end_is_not_held_in_memory():
    reader = FrameReader()
    items = [*reader.feed(b"Content-Length: 12"), *reader.feed(b" " * (4 * MAX_HEADER_BYTES))]
    assert len(reader.buffer) <= 2 * MAX_HEADER_BYTES
    items += reader.feed(b"\r\n\r\n" + frame(OTHER))
    assert bodies(items) == [OTHER] and len(reasons(items)) == 1


def test_text_like_a_header_inside_a_dropped_body_does_not_start_a_frame():
    # JSON strings hold no raw line ends, so a "Content-Length: 2" in one is followed by a quote
    # before the next line end: it is not a header, and the real header on that line is found.
    body = json.dumps({"text": "Content-Length: 2\r\n\r\n{}", "Content-Length:": 5}).encode()
    items = read(b"Content-Length: 99999999999\r\n\r\n" + body + frame(OTHER))
    assert bodies(items) == [OTHER] and len(reasons(items)) == 1


def test_random_garbage_never_loses_the_valid_frames_around_it():
    generator = random.Random(20)
    for _ in range(200):
        garbage = bytes(generator.randrange(256) for _ in range(generator.randrange(1, 300)))
        garbage = garbage.replace(b"\n", b" ")  # a line end could end a valid header block
        stream = frame(BODY) + garbage + frame(OTHER)
        cuts = sorted(generator.sample(range(1, len(stream)), 3))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert bodies(read(*chunks)) == [BODY, OTHER], garbage


@pytest.mark.parametrize(
    "text, address",
    [
        ("127.0.0.1:2087", ("127.0.0.1", 2087)),
        (":2087", ("127.0.0.1", 2087)),
        ("2087", ("127.0.0.1", 2087)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_loopback_addresses(text, address):
    assert tcp_address(text) == address


@pytest.mark.parametrize("text", ["0.0.0.0:2087", "[::]:2087", "192.168.1.10:2087"])
def test_other_hosts_need_allow_remote(text, caplog):
    with pytest.raises(ValueError, match="--allow-remote"):
        tcp_address(text)
    assert tcp_address(text, allow_remote=True)[1] == 2087
    assert "reachable from other machines" in caplog.text


@pytest.mark.parametrize("text", ["127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_malformed_addresses(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        tcp_address(text)


def test_the_writer_writes_whole_frames_and_ends_the_session_when_the_reader_is_gone():
    read_end, write_end = os.pipe()
    gone: list[bool] = []
    writer = FdWriter(write_end, lambda: gone.append(True))
    writer.write(b"x" * 1000)
    assert os.read(read_end, 2000) == b"x" * 1000 and gone == []
    os.close(read_end)
    writer.write(b"y")  # EPIPE: the client closed its end
    writer.write(b"z")  # and nothing more is tried
    os.close(write_end)
    assert gone == [True]
