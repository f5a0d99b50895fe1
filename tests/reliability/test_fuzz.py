"""A seeded fuzz of the real server: 10,000+ messages, each request answered once with the right code."""

from __future__ import annotations

import collections
import json
import random
import time
from typing import Any

from tests.reliability.wire import (
    PREFIX,
    StdioServer,
    did_open,
    end_of,
    initialize,
    inline,
    key,
    notification,
    request,
)

SEED = 20
MESSAGES = {"new": 500, "running": 9_000, "shut down": 600}
RESULT, CANCELLED = "result", -32800
PARSE, INVALID_REQUEST, NOT_FOUND, INVALID_PARAMS, NOT_INITIALIZED = (
    -32700, -32600, -32601, -32602, -32002,
)  # fmt: skip
URI = "file:///fuzz.py"
GOOD_INLINE = inline(0, URI, 0, 0)["params"]
BAD_PARAMS = [
    "x", 5, True, [1], {"list": []},
    {**GOOD_INLINE, "position": {"line": -1, "character": 0}},
    {**GOOD_INLINE, "position": {"line": 1.5, "character": 0}},
    {**GOOD_INLINE, "position": {"line": "2", "character": 0}},
    {**GOOD_INLINE, "textDocument": {"uri": 7}},
    {**GOOD_INLINE, "context": {"triggerKind": 9}},
    {"textDocument": {"uri": URI}},
]  # fmt: skip
NO_SUCH_REQUEST = [
    "foo/bar", "textDocument/hover", "$/cancelRequest", "$/setTrace", "$/progress",
    "textDocument/didOpen", "textDocument/didChange", "exit", "initialized", "", "fimLsp",
]  # fmt: skip
BAD_IDS = [1.5, 2.0, True, False, None, [1], {"id": 1}, -0.5]
# Frames the server must drop whole (the request inside is never seen).
DROPPED_HEADERS = [
    b"Content-Length: 1000000000000\r\n\r\n",
    b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"Content-Length: 123456789012345678901234567890\r\n\r\n",
    b"Content-Length: -12\r\n\r\n",
    b"Content-Length: 0x20\r\n\r\n",
    b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n",
    b"\r\n",
]
READ_HEADERS = [  # frames spelled otherwise that the server reads
    b"content-length: %d\r\n\r\n",
    b"Content-Length: %d\n\n",
    b"CONTENT-LENGTH:%d\r\n\n",
    b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n",
    b"Content-Type: application/vscode-jsonrpc\nX-Extra: 1\ncontent-length:   %d  \n\n",
]


class Fuzz:
    """Generates messages and what the server must answer to each."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.expected: dict[tuple[str, Any], set[Any]] = {}  # id -> the answers allowed
        self.null_answers: collections.Counter[int] = collections.Counter()  # id null errors
        self.ids = 0
        self.version = 1
        self.text = PREFIX
        self.in_flight: list[Any] = []  # completion ids that a cancel may still reach
        self.count = 0

    def new_id(self) -> Any:
        """A fresh integer or string id (1 and "1" are different ids)."""
        self.ids += 1
        return self.random.choice(
            [self.ids, -self.ids, 2**53 + self.ids, f"{self.ids}", f"ид-{self.ids}", f"s{self.ids}"]
        )

    def stream(self, phase: str, count: int) -> bytes:
        return b"".join(self.unit(phase) for _ in range(count))

    def unit(self, phase: str) -> bytes:
        """One message, in a frame that is usually well formed, with garbage now and then."""
        self.count += 1
        message, answer = self.message(phase)
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        msg_id = message.get("id") if isinstance(message, dict) else None
        droppable = isinstance(message, dict) and message.get("method") != "textDocument/didChange"
        roll = self.random.random()
        garbage = self.garbage() if self.random.random() < 0.03 else b""
        if droppable and roll < 0.04:  # a frame the server cannot read: dropped whole, unanswered
            return garbage + self.random.choice(DROPPED_HEADERS) + body
        if droppable and roll < 0.07:  # a Content-Length short of the body: invalid JSON
            self.null_answers[PARSE] += 1
            cut = self.random.randrange(len(body) - 1)
            return garbage + b"Content-Length: %d\r\n\r\n" % cut + body
        self.expect(msg_id, answer)
        header = self.random.choice(READ_HEADERS) if roll < 0.15 else b"Content-Length: %d\r\n\r\n"
        return garbage + header % len(body) + body

    def expect(self, msg_id: Any, answer: Any) -> None:
        if answer is None:
            return
        if answer[0] == "null":
            self.null_answers[answer[1]] += 1
        else:
            assert key(msg_id) not in self.expected
            self.expected[key(msg_id)] = answer[1]

    def garbage(self) -> bytes:
        alphabet = b'abcXYZ{}[]":, \t\x00\xff\r\n0123456789'
        return bytes(self.random.choice(alphabet) for _ in range(self.random.randrange(1, 80)))

    def message(self, phase: str) -> tuple[Any, Any]:
        """A message and its answer: None, ("null", code) or ("id", {allowed answers})."""
        kind = self.random.choices(
            ["request", "bad params", "no such request", "bad id", "bad envelope", "not an object",
             "not JSON", "notification", "bad notification", "response", "cancel"],
            weights=[14, 10, 10, 6, 8, 4, 5, 25, 8, 4, 6],
        )[0]  # fmt: skip
        refused = {"new": NOT_INITIALIZED, "shut down": INVALID_REQUEST}.get(phase)
        msg_id = self.new_id()
        if kind == "request":
            method, params = self.random.choice(
                [("fimLsp/status", None), ("fimLsp/status", {})]
                + [self.completion_request()] * 2
                + [("initialize", initialize()["params"])]
            )
            if method == "initialize" and phase == "new":  # one that must fail: bad params
                return request(msg_id, method, {"processId": 1.5}), ("id", {INVALID_PARAMS})
            if method == "initialize":  # a second one
                return request(msg_id, method, params), ("id", {INVALID_REQUEST})
            if method != "fimLsp/status" and refused is None:
                self.in_flight.append(msg_id)
            return request(msg_id, method, params), ("id", {refused or RESULT})
        if kind == "bad params":
            method = self.random.choice(
                ["textDocument/inlineCompletion", "textDocument/completion"]
            )
            params = self.random.choice(BAD_PARAMS)
            return request(msg_id, method, params), ("id", {refused or INVALID_PARAMS})
        if kind == "no such request":
            method = self.random.choice(NO_SUCH_REQUEST)
            return request(msg_id, method, {"id": 1}), ("id", {refused or NOT_FOUND})
        if kind == "bad id":
            message = request(self.random.choice(BAD_IDS), "fimLsp/status")
            return message, ("null", INVALID_REQUEST)
        if kind == "bad envelope":
            message = self.random.choice(
                [
                    {"id": msg_id, "method": "fimLsp/status"},
                    {"jsonrpc": "1.0", "id": msg_id, "method": "fimLsp/status"},
                    {"jsonrpc": 2.0, "id": msg_id, "method": "fimLsp/status"},
                    {"jsonrpc": "2.0", "id": msg_id, "method": 42},
                    {"jsonrpc": "2.0", "id": msg_id, "method": None},
                    {"jsonrpc": "2.0", "id": msg_id},
                ]
            )
            return message, ("id", {INVALID_REQUEST})
        if kind == "not an object":
            body = self.random.choice([b"[]", b"[1, 2]", b"42", b'"x"', b"null", b"true"])
            return body, ("null", INVALID_REQUEST)
        if kind == "not JSON":
            text = json.dumps(request(msg_id, "fimLsp/status")).encode()
            body = self.random.choice(
                [text[: self.random.randrange(len(text))], b"{" + self.garbage(), b'{"a": NaN}',
                 b"\xff\xfe" + text, b"[" * 5000, b""]
            )  # fmt: skip
            return body, ("null", PARSE)
        if kind == "notification":
            return self.notification(), None
        if kind == "bad notification":
            method, params = self.random.choice(
                [
                    ("textDocument/didChange", {"textDocument": {"uri": URI}, "contentChanges": 5}),
                    ("textDocument/didChange", "x"),
                    ("textDocument/didOpen", {"textDocument": {"uri": 1}}),
                    ("textDocument/didClose", []),
                    ("$/cancelRequest", {"id": [1]}),
                    ("workspace/didChangeConfiguration", 3),
                ]
            )
            return notification(method, params), None
        if kind == "response":
            answer = self.random.choice([{"result": 1}, {"error": {"code": 1, "message": "x"}}])
            return {"jsonrpc": "2.0", "id": f"reply-{msg_id}", **answer}, None
        # A cancel: of a completion that may still run (answered with a result or cancelled),
        # or of an id the server does not know.
        target = self.in_flight.pop() if self.in_flight else msg_id
        if key(target) in self.expected and self.expected[key(target)] == {RESULT}:
            self.expected[key(target)] = {RESULT, CANCELLED}
        return notification("$/cancelRequest", {"id": target}), None

    def completion_request(self) -> tuple[str, dict]:
        line, character = end_of(self.text)
        if self.random.random() < 0.2:  # past the end: an empty answer, not an error
            line += self.random.randrange(1, 5)
        method = self.random.choice(["textDocument/inlineCompletion", "textDocument/completion"])
        params = inline(0, URI, line, character)["params"]
        if method == "textDocument/completion":
            del params["context"]
        return method, params

    def notification(self) -> dict:
        method = self.random.choice(["change", "change", "change", "$/setTrace", "unknown"])
        if method == "$/setTrace":
            return notification("$/setTrace", {"value": self.random.choice(["off", "messages"])})
        if method == "unknown":
            return notification(self.random.choice(["foo/bar", "$/unknown", "fimLsp/nothing"]), {})
        self.version += 1
        if len(self.text) > 2000:  # start again, with the whole text
            self.text = PREFIX
            change = {"text": PREFIX}
        else:
            typed = self.random.choice(["a", "b", "(", ")", " ", "\n", "x = 1\n", "é", "🙂"])
            line, character = end_of(self.text)
            character = len(self.text.split("\n")[-1].encode("utf-16-le")) // 2  # UTF-16 units
            at = {"line": line, "character": character}
            change = {"range": {"start": at, "end": at}, "text": typed}
            self.text += typed
        document = {"uri": URI, "version": self.version}
        return notification(
            "textDocument/didChange", {"textDocument": document, "contentChanges": [change]}
        )


def send(server: StdioServer, fuzz: Fuzz, data: bytes) -> None:
    """In pieces of random sizes: frames split across reads as they are on a real pipe."""
    start = 0
    while start < len(data):
        size = fuzz.random.randrange(1, 16384)
        server.send_bytes(data[start : start + size])
        start += size


def answered(server: StdioServer, fuzz: Fuzz) -> bool:
    return all(msg_id in server.answers for msg_id in fuzz.expected) and sum(
        fuzz.null_answers.values()
    ) <= len(server.null_answers)


def check(server: StdioServer, fuzz: Fuzz) -> None:
    assert server.wait(lambda: answered(server, fuzz), timeout=120), "requests left unanswered"
    time.sleep(0.5)  # room for an answer too many to arrive
    assert not server.frame_errors
    for msg_id, allowed in fuzz.expected.items():
        answers = server.answers[msg_id]
        assert len(answers) == 1, f"{len(answers)} answers to {msg_id}: {answers}"
        answer = answers[0]
        outcome = answer["error"]["code"] if "error" in answer else RESULT
        assert outcome in allowed, f"{msg_id}: {answer}, expected one of {allowed}"
    unexpected = set(server.answers) - set(fuzz.expected)
    assert not unexpected, (
        f"answers to ids that should get none: {sorted(map(str, unexpected))[:10]}"
    )
    null_codes = collections.Counter(answer["error"]["code"] for answer in server.null_answers)
    assert null_codes == fuzz.null_answers


def test_ten_thousand_fuzzed_messages_each_request_answered_once(tmp_path):
    fuzz = Fuzz(SEED)
    with StdioServer(tmp_path / "server.log") as server:
        send(server, fuzz, fuzz.stream("new", MESSAGES["new"]))
        check(server, fuzz)

        server.send(initialize("init"), notification("initialized", {}), did_open(URI, PREFIX))
        fuzz.expected[key("init")] = {RESULT}
        send(server, fuzz, fuzz.stream("running", MESSAGES["running"]))
        check(server, fuzz)

        # Still correct: a real completion on a document opened now.
        status_ids = range(10**9, 10**9 + 1000)
        server.wait_ready(iter(status_ids))
        fuzz.expected |= {key(i): {RESULT} for i in status_ids if key(i) in server.answers}
        text = "def add(a, b):\n    return "
        server.send(
            did_open("file:///after.py", text), inline("after", "file:///after.py", *end_of(text))
        )
        fuzz.expected[key("after")] = {RESULT}
        (item,) = server.answer("after", timeout=60)["result"]["items"]
        assert item["insertText"]

        server.send(request("bye", "shutdown"))
        fuzz.expected[key("bye")] = {RESULT}
        send(server, fuzz, fuzz.stream("shut down", MESSAGES["shut down"]))
        check(server, fuzz)
        server.send(notification("exit"))
        assert server.exit_code() == 0
    assert fuzz.count >= 10_000
    shown = [
        m["params"]["message"] for m in server.notifications if m["method"] == "window/showMessage"
    ]
    assert sum("not an LSP message" in message for message in shown) == 1  # told once
    assert "Traceback" not in (tmp_path / "server.log").read_text()
