"""A simulated user in real source files: lines typed back a key at a time, each key a didChange
and an inline completion request, some requests cancelled; every request's fate recorded."""

from __future__ import annotations

import collections
import json
import random
import statistics
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.wire import Connection, inline, key, notification

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CANCELLED = -32800  # LSP's RequestCancelled


def stdlib_files(count: int, rng: random.Random) -> list[Path]:
    """`count` modules of the standard library (real code of every kind), 4 to 40 KB each.

    Only files with LF line ends and ASCII text: the editor counts columns as characters, which
    are UTF-16 units there, and splits lines at LF as LSP does."""
    candidates = []
    for path in sorted(STDLIB.glob("*.py")):
        if 4_000 <= path.stat().st_size <= 40_000:
            text = path.read_bytes()
            if text.isascii() and b"\r" not in text:
                candidates.append(path)
    return rng.sample(candidates, count)


@dataclass
class Document:
    """The client's copy of one open document, and the line being typed back into it."""

    uri: str
    lines: list[str]
    version: int = 1
    line: int = 0  # the line being typed back
    typed: int = 0  # characters of it in the document (the cursor is after them)


@dataclass
class Fates:
    """What became of the requests sent: counts by outcome and the latencies of each."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def all_latencies_ms(self) -> list[float]:
        return [ms for values in self.latencies_ms.values() for ms in values]


class Editor:
    """Documents open in a client, typed into as a user does: a line is cleared to its indent and
    typed back one key at a time, so that the documents stay real code at every step."""

    def __init__(self, server: Connection, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.documents: dict[str, Document] = {}
        self.sent_at: dict[tuple[str, Any], float] = {}  # request key -> time.monotonic()
        self.cancelled: set[tuple[str, Any]] = set()

    def open(self, path: Path, uri: str | None = None) -> Document:
        uri = uri or path.resolve().as_uri()
        text = path.read_text()
        document = Document(uri, text.split("\n"))
        self.documents[uri] = document
        item = {"uri": uri, "languageId": "python", "version": 1, "text": text}
        self.server.send(notification("textDocument/didOpen", {"textDocument": item}))
        self.move(document)
        return document

    def close(self, document: Document) -> None:
        del self.documents[document.uri]
        params = {"textDocument": {"uri": document.uri}}
        self.server.send(notification("textDocument/didClose", params))

    def move(self, document: Document) -> None:
        """Finish the line being typed (as accepting a suggestion would), then clear another one
        to its indent and put the cursor there."""
        rest = document.lines[document.line][document.typed :]
        if rest:
            self.edit(document, document.typed, document.typed, rest)
        document.line = self.rng.choice(
            [number for number, line in enumerate(document.lines) if line.strip()]
        )
        line = document.lines[document.line]
        document.typed = len(line) - len(line.lstrip())
        self.edit(document, document.typed, len(line), "")

    def type_key(self, document: Document) -> None:
        """Type the next character of the line, or move to another line when it is all there."""
        line = document.lines[document.line]
        if document.typed == len(line):
            self.move(document)
            line = document.lines[document.line]
        self.edit(document, document.typed, document.typed, line[document.typed])
        document.typed += 1

    def edit(self, document: Document, start: int, end: int, text: str) -> None:
        """Replace characters start:end of the current line with `text` in the server's copy
        (ours keeps the whole line: `typed` says how much of it the server has)."""
        document.version += 1
        span = {
            "start": {"line": document.line, "character": start},
            "end": {"line": document.line, "character": end},
        }
        params = {
            "textDocument": {"uri": document.uri, "version": document.version},
            "contentChanges": [{"range": span, "text": text}],
        }
        self.server.send(notification("textDocument/didChange", params))

    def request(self, msg_id: Any, document: Document) -> None:
        """An inline completion at the cursor."""
        self.sent_at[key(msg_id)] = time.monotonic()
        self.server.send(inline(msg_id, document.uri, document.line, document.typed))

    def cancel(self, msg_id: Any) -> None:
        self.cancelled.add(key(msg_id))
        self.server.send(notification("$/cancelRequest", {"id": msg_id}))

    def configure(self, **options: Any) -> None:
        """Change settings live, as an editor does when the user edits them."""
        params = {"settings": {"fimLsp": options}}
        self.server.send(notification("workspace/didChangeConfiguration", params))

    def latency_ms(self, msg_id: Any) -> float:
        """From sending the request to its (first) answer."""
        return (self.server.answered_at[key(msg_id)] - self.sent_at[key(msg_id)]) * 1000

    def waiting(self) -> int:
        """Requests sent that have no answer yet."""
        return sum(msg_id not in self.server.answers for msg_id in self.sent_at)

    def wait_for_answers(self, timeout: float) -> bool:
        return self.server.wait(lambda: self.waiting() == 0, timeout)

    def fate(self, msg_id: Any) -> str:
        """What became of a request: answered with a suggestion, empty or cancelled; or a bug:
        another error, a cancel nobody asked for, no answer, more than one."""
        answers = self.server.answers.get(key(msg_id), [])
        if len(answers) != 1:
            return "unanswered" if not answers else "answered twice or more"
        answer = answers[0]
        if "error" not in answer:
            return "suggestion" if answer["result"]["items"] else "empty"
        if answer["error"]["code"] != CANCELLED:
            return "error"
        return "cancelled" if key(msg_id) in self.cancelled else "cancelled unasked"

    def fates(self, msg_ids: Iterable[Any] | None = None) -> Fates:
        """The fates of the requests `msg_ids` (all sent, by default), with their latencies."""
        fates = Fates()
        if msg_ids is None:
            msg_ids = [msg_id for _, msg_id in self.sent_at]
        for msg_id in msg_ids:
            fate = self.fate(msg_id)
            fates.counts[fate] += 1
            if key(msg_id) in self.server.answered_at:
                fates.latencies_ms.setdefault(fate, []).append(self.latency_ms(msg_id))
        return fates


def completion_logs(server: Connection) -> list[dict]:
    """The server's line per answer that ran the pipeline (its `completion {...}` log message):
    prompt and cached tokens, stop reason, timings."""
    return [
        json.loads(message["params"]["message"].removeprefix("completion "))
        for message in list(server.notifications)
        if message["method"] == "window/logMessage"
        and message["params"]["message"].startswith("completion ")
    ]


def p99(values: list[float]) -> float:
    """The 99th percentile (interpolated between the nearest ranks); NaN for no values."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]
