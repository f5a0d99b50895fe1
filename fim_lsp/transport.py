"""LSP's base protocol on byte streams: frames read within stated limits; stdio and TCP sessions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import re
import select
import socket
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fim_lsp.protocol import FimProtocol

log = logging.getLogger(__name__)

# A didOpen of a 10 MB file is 10-20 MB of JSON (escapes can double it). 64 MiB leaves room for
# that, and bounds what one message can make the server hold (parsed, it takes several times more).
MAX_CONTENT_LENGTH = 64 * 2**20
# Digits of a length worth converting: more than any 64-bit number has. A longer one is refused
# unread (int() of thousands of digits is slow, and Python raises past 4,300).
MAX_LENGTH_DIGITS = 20
# Header lines are a few dozen bytes; this many without a Content-Length line are not a frame.
MAX_HEADER_BYTES = 4096
CHUNK_BYTES = 64 * 1024  # one read from the client

NAME = b"content-length:"
CONTENT_LENGTH = re.compile(re.escape(NAME), re.IGNORECASE)  # header names have no case
# Lines that may come before Content-Length: other headers (ignored) and blank lines.
# Header names are HTTP tokens: no JSON text starts with a token and a colon.
OTHER_HEADERS = re.compile(rb"(?:(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*)?\r?\n)*")
LINE_END = (b"\n", b"\r\n")  # LSP says CRLF; some clients send LF alone


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Input that was not a frame and was dropped, and why."""

    reason: str


class FrameReader:
    """Splits the client's bytes into message bodies: `Content-Length: N` headers, then N bytes.

    A frame whose length is missing, unreadable or over MAX_CONTENT_LENGTH is never read whole:
    its bytes are dropped up to the next `Content-Length: <digits>` line, where reading resumes.
    That line cannot occur inside a valid JSON body (strings hold no raw line ends, and outside
    strings its letters are not JSON), so the resynchronisation never starts inside a message,
    even when the next frame follows a dropped body without a line end. What is held stays within
    two MAX_HEADER_BYTES and a chunk while searching, and one body and a chunk while reading it.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.length: int | None = None  # the body's length, once a Content-Length line is read
        self.in_body = False  # the blank line after the headers was read
        self.skipping = False  # dropping bytes after a problem: report it once, not per chunk

    def feed(self, data: bytes) -> list[bytes | Skipped]:
        """The bodies (and dropped stretches) that `data` completes, in order."""
        self.buffer += data
        found: list[bytes | Skipped] = []
        while True:
            if self.length is None:
                progress = self.find_length(found)
            elif not self.in_body:
                progress = self.read_other_headers(found)
            else:
                progress = self.read_body(self.length, found)
            if not progress:
                return found

    def find_length(self, found: list[bytes | Skipped]) -> bool:
        """Read up to the next Content-Length line; False until enough input is there."""
        match = CONTENT_LENGTH.search(self.buffer)
        if match is None:
            if len(self.buffer) > MAX_HEADER_BYTES:  # keep only what may begin the name
                dropped = len(self.buffer) - len(NAME) + 1
                self.drop(found, dropped, f"{dropped} bytes without a Content-Length header")
            return False
        if not OTHER_HEADERS.fullmatch(self.buffer, 0, match.start()):
            self.drop(found, match.start(), "bytes that are not an LSP message")
            return True
        name_end = match.end()
        line_end = self.buffer.find(b"\n", name_end, name_end + MAX_HEADER_BYTES)
        if line_end < 0:
            if len(self.buffer) - name_end < MAX_HEADER_BYTES:
                return False  # the rest of the line is still on its way
            self.drop(found, name_end, f"a Content-Length line over {MAX_HEADER_BYTES} bytes")
            return True
        value = bytes(self.buffer[name_end:line_end]).strip(b" \t\r")
        if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
            digits = f"a number of {MAX_LENGTH_DIGITS} digits or less"
            reason = f"Content-Length {preview(value)} is not {digits}"
        elif int(value) > MAX_CONTENT_LENGTH:
            reason = f"Content-Length {int(value)} is over the limit of {MAX_CONTENT_LENGTH} bytes"
        else:
            self.length = int(value)
            del self.buffer[: line_end + 1]
            return True
        # Drop only the name: this may be text in a dropped body, with a real header on the line.
        self.drop(found, name_end, reason)
        return True

    def read_other_headers(self, found: list[bytes | Skipped]) -> bool:
        """Skip the header lines after Content-Length up to the blank one; False until they are there."""
        while (line_end := self.buffer.find(b"\n", 0, MAX_HEADER_BYTES)) >= 0:
            line = bytes(self.buffer[: line_end + 1])
            if line in LINE_END:
                del self.buffer[: line_end + 1]
                self.in_body = True
                return True
            if CONTENT_LENGTH.match(line) or not OTHER_HEADERS.fullmatch(line):
                # Not a header: the frame had no blank line. Search again from this line.
                self.problem(
                    found, f"a header block ends in {preview(line)} instead of a blank line"
                )
                self.length = None
                return True
            del self.buffer[: line_end + 1]
        if len(self.buffer) < MAX_HEADER_BYTES:
            return False
        self.problem(found, f"a header line over {MAX_HEADER_BYTES} bytes")
        self.length = None
        return True

    def read_body(self, length: int, found: list[bytes | Skipped]) -> bool:
        if len(self.buffer) < length:
            return False
        found.append(bytes(self.buffer[:length]))
        del self.buffer[:length]
        self.length, self.in_body, self.skipping = None, False, False
        return True

    def drop(self, found: list[bytes | Skipped], count: int, reason: str) -> None:
        del self.buffer[:count]
        self.problem(found, reason)

    def problem(self, found: list[bytes | Skipped], reason: str) -> None:
        if not self.skipping:  # what follows a bad frame is its body: one report for both
            found.append(Skipped(reason))
        self.skipping = True


def preview(value: bytes) -> str:
    """A header value for a message: short, printable."""
    text = value.decode("ascii", "backslashreplace")
    return repr(text) if len(text) <= 24 else f"{text[:20]!r}... ({len(value)} bytes)"


async def pump(read: Callable[[], Awaitable[bytes]], protocol: FimProtocol) -> None:
    """Hand each message the client sends to the protocol, until its side of the stream ends."""
    frames = FrameReader()
    while chunk := await read():
        for frame in frames.feed(chunk):
            if isinstance(frame, Skipped):
                protocol.tell_once(
                    "framing", f"dropped input that is not an LSP message: {frame.reason}"
                )
                continue
            try:
                protocol.handle_body(frame)
            except Exception:  # a bug in one message's handling must not end the session
                log.exception("handling a message failed")


def run(session: Coroutine[Any, Any, None], server: LanguageServer) -> int:
    """Run a session to its end; the exit code (pygls' `exit` handler raises SystemExit)."""
    try:
        asyncio.run(session)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as shells report it
    finally:
        server.shutdown()
    return 0


def fim_protocol(server: LanguageServer) -> FimProtocol:
    if not isinstance(server.protocol, FimProtocol):  # it is what reads the message bodies
        raise TypeError("the server needs protocol_cls=FimProtocol")
    return server.protocol


# stdio ----------------------------------------------------------------------------------------


def serve_stdio(server: LanguageServer) -> int:
    """Serve the client on stdin/stdout until it exits or closes either pipe; the exit code."""
    session = stdio_session(fim_protocol(server), sys.stdin.fileno(), sys.stdout.fileno())
    return run(session, server)


async def stdio_session(protocol: FimProtocol, stdin: int, stdout: int) -> None:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)  # a client sending faster waits
    reading = asyncio.ensure_future(pump(chunks.get, protocol))

    def client_gone() -> None:  # from any thread
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(reading.cancel)

    protocol.set_writer(FdWriter(stdout, client_gone))
    read_in_thread(stdin, loop, chunks)
    watch_hangup(stdout, client_gone)
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    log.info("the client closed the connection")


def read_in_thread(fd: int, loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[bytes]) -> None:
    """Read `fd` into `chunks` (b"" at its end) from a daemon thread, which a read blocked at
    exit does not hold up (an executor's would), and which works on any file and platform."""

    def read() -> None:
        chunk = b"."
        while chunk:
            try:
                chunk = os.read(fd, CHUNK_BYTES)
            except OSError as error:
                log.warning("cannot read from the client: %s", error)
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):  # the loop has ended
                return

    threading.Thread(target=read, name="fim-lsp-stdin", daemon=True).start()


def watch_hangup(fd: int, hung_up: Callable[[], None]) -> None:
    """Call `hung_up` once the reader at the other end of `fd`, a pipe or socket, goes away.

    Without this a server whose client closed only its reading end would live on while nothing
    is written (a write would fail). Only pipes and sockets: poll() does not watch all devices
    everywhere (macOS reports POLLNVAL for terminals), and Windows has no poll().
    """
    if not hasattr(select, "poll"):
        return
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # no events asked: POLLERR, POLLHUP and POLLNVAL always come
        poller.poll()
        log.info("the client closed its end of our output")
        hung_up()

    threading.Thread(target=watch, name="fim-lsp-stdout-watch", daemon=True).start()


class FdWriter:
    """pygls' writer on a file descriptor: whole frames, unbuffered (nothing left to flush at
    exit), and a reader that went away ends the session instead of raising in a handler."""

    def __init__(self, fd: int, closed_by_client: Callable[[], None]) -> None:
        self.fd = fd
        self.closed_by_client = closed_by_client
        self.closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view and not self.closed:
                view = view[os.write(self.fd, view) :]
        except OSError as error:
            log.warning("cannot write to the client: %s", error)
            self.closed = True
            self.closed_by_client()

    def close(self) -> None:
        self.closed = True  # the descriptor is the process's stdout: the exit closes it


# TCP ------------------------------------------------------------------------------------------


def tcp_address(text: str, allow_remote: bool = False) -> tuple[str, int]:
    """The host and port of `--tcp HOST:PORT` (host 127.0.0.1 when left out).

    Raises ValueError for a malformed address, and for a host other machines can reach unless
    `allow_remote`: whoever connects reads the files the editor sends and uses the model.
    """
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"  # [::1]:2087
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text}: expected HOST:PORT, with a port from 1 to 65535")
    if not is_loopback(host):
        exposure = (
            f"{host} is reachable from other machines: anyone who can connect can read the "
            "files the editor sends and use the model"
        )
        if not allow_remote:
            raise ValueError(f"{exposure}. Use 127.0.0.1, or --allow-remote to accept this.")
        log.warning("%s (--allow-remote)", exposure)
    return host, int(port)


def serve_tcp(server: LanguageServer, host: str, port: int) -> int:
    """Serve one client on TCP until it exits or disconnects; the exit code."""
    return run(tcp_session(fim_protocol(server), host, port), server)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's loopback."""
    try:
        addresses = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(address[4][0]).is_loopback for address in addresses
    )


async def tcp_session(protocol: FimProtocol, host: str, port: int) -> None:
    """One client at a time: its answers must not reach anyone else, so others are refused."""
    ended = asyncio.Event()
    client: asyncio.StreamWriter | None = None

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal client
        peer = writer.get_extra_info("peername")
        if client is not None:
            log.warning("refused a second client (%s): one client at a time", peer)
            writer.write(frame(refusal_message()))
            writer.close()
            return
        log.info("client connected: %s", peer)
        client = writer
        protocol.set_writer(writer)

        async def read() -> bytes:
            try:
                return await reader.read(CHUNK_BYTES)
            except OSError as error:  # a reset connection ends the session like a closed one
                log.warning("cannot read from the client: %s", error)
                return b""

        try:
            await pump(read, protocol)
        finally:
            writer.close()
            ended.set()

    listener = await asyncio.start_server(connected, host, port)
    log.info("listening on %s", ", ".join(str(s.getsockname()) for s in listener.sockets))
    async with listener:
        await ended.wait()
    log.info("the client disconnected")


def refusal_message() -> dict[str, Any]:
    text = "fim-lsp: another client is connected, and this server serves one client at a time"
    params = {"type": types.MessageType.Error.value, "message": text}
    return {"jsonrpc": "2.0", "method": types.WINDOW_SHOW_MESSAGE, "params": params}


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
