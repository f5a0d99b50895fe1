"""Every request answered once, with the error JSON-RPC and LSP name, by FimProtocol in process."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from fim_lsp.protocol import FimProtocol

URI = "file:///a.py"
POSITION = {"line": 0, "character": 0}
INLINE = {"textDocument": {"uri": URI}, "position": POSITION, "context": {"triggerKind": 1}}
PARSE, INVALID_REQUEST, NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
NOT_INITIALIZED, CANCELLED = -32002, -32800


class Client:
    """A server with a few handlers, and what it wrote back."""

    def __init__(self, protocol_cls: type[LanguageServerProtocol] = FimProtocol) -> None:
        self.server = LanguageServer("test", "0", protocol_cls=protocol_cls)
        self.protocol: Any = self.server.protocol
        self.written: list[dict] = []
        self.changes: list[types.DidChangeTextDocumentParams] = []
        self.release = asyncio.Event()

        @self.server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION)
        async def inline(ls: LanguageServer, params: types.InlineCompletionParams) -> Any:
            await self.release.wait()  # stays in flight until the test releases it
            return types.InlineCompletionList(items=[])

        @self.server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
        def did_change(ls: LanguageServer, params: types.DidChangeTextDocumentParams) -> None:
            self.changes.append(params)

        @self.server.feature("test/echo")
        def echo(ls: LanguageServer, params: Any) -> Any:
            return params

        self.protocol.set_writer(self)

    def write(self, data: bytes) -> None:
        self.written.append(json.loads(data.split(b"\r\n\r\n", 1)[1]))

    def close(self) -> None:
        pass

    def send(self, message: Any) -> list[dict]:
        """What the server wrote in answer to `message` (a dict, or raw bytes)."""
        start = len(self.written)
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.protocol.handle_body(body)
        return self.written[start:]

    def request(self, msg_id: Any, method: str, params: Any = None) -> list[dict]:
        return self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})

    def notify(self, method: str, params: Any = None) -> list[dict]:
        return self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def initialize(self) -> None:
        (answer,) = self.request(0, "initialize", {"processId": None, "capabilities": {}})
        assert "capabilities" in answer["result"]

    def open(self) -> None:
        document = {"uri": URI, "languageId": "python", "version": 1, "text": ""}
        self.notify("textDocument/didOpen", {"textDocument": document})


def error_of(answers: list[dict], msg_id: Any) -> int:
    (answer,) = answers
    assert answer["id"] == msg_id and type(answer["id"]) is type(msg_id)
    assert answer["error"]["message"]
    return answer["error"]["code"]


@pytest.fixture
def client() -> Client:
    client = Client()
    client.initialize()
    return client


@pytest.mark.parametrize("body", [b"{", b"", b"\xff\xfe{}", b'{"id": NaN}', b"[" * 100_000])
def test_what_is_not_json_is_a_parse_error_with_a_null_id(client, body):
    assert error_of(client.send(body), None) == PARSE


@pytest.mark.parametrize("body", [[], [{"jsonrpc": "2.0", "id": 1, "method": "x"}], 1, "x", None])
def test_what_is_not_an_object_is_an_invalid_request(client, body):
    assert error_of(client.send(body), None) == INVALID_REQUEST


@pytest.mark.parametrize("msg_id", [1.5, 1.0, True, None, [1], {"a": 1}])
def test_an_id_that_is_not_an_integer_or_string_is_refused_with_a_null_id(client, msg_id):
    assert error_of(client.request(msg_id, "test/echo"), None) == INVALID_REQUEST


@pytest.mark.parametrize(
    "message",
    [
        {"id": 7, "method": "test/echo"},  # no jsonrpc
        {"jsonrpc": "1.0", "id": 7, "method": "test/echo"},
        {"jsonrpc": "2.0", "id": 7, "method": 5},
        {"jsonrpc": "2.0", "id": 7},  # neither a request nor a response
    ],
)
def test_a_broken_envelope_is_an_invalid_request_with_its_id(client, message):
    assert error_of(client.send(message), 7) == INVALID_REQUEST


def test_a_broken_envelope_without_an_id_is_answered_with_a_null_id(client):
    assert error_of(client.send({"jsonrpc": "2.0", "method": 5}), None) == INVALID_REQUEST


@pytest.mark.parametrize("msg_id", [0, -1, 2**53, "", "é ✓", "x" * 1000])
def test_integer_and_string_ids_come_back_as_they_were(client, msg_id):
    (answer,) = client.request(msg_id, "test/echo", {"a": [1]})
    assert answer["id"] == msg_id and type(answer["id"]) is type(msg_id)
    assert answer["result"] == {"a": [1]}


@pytest.mark.parametrize(
    "method",
    ["nope", "textDocument/hover", "$/cancelRequest", "$/setTrace", "textDocument/didOpen", "exit"],
)
def test_unknown_methods_dollar_requests_and_notifications_sent_as_requests(client, method):
    assert error_of(client.request(3, method, {"id": 1, "value": "off"}), 3) == NOT_FOUND


@pytest.mark.parametrize(
    "params, where",
    [
        ("x", "an object or an array"),
        (5, "an object or an array"),
        ({"list": [1]}, "params.position"),
        ([INLINE], "params"),
        (None, "params"),
        ({**INLINE, "position": {"line": -1, "character": 0}}, "params.position"),
        ({**INLINE, "position": {"line": 1.5, "character": 0}}, "params.position.line"),
        ({**INLINE, "position": {"line": 1.0, "character": 0}}, "params.position.line"),
        ({**INLINE, "position": {"line": "1", "character": 0}}, "params.position.line"),
        ({**INLINE, "position": {"line": True, "character": 0}}, "params.position.line"),
        ({**INLINE, "textDocument": {"uri": 5}}, "params.text_document.uri"),
        ({**INLINE, "context": {"triggerKind": 9}}, "params.context.trigger_kind"),
    ],
)
def test_params_of_the_wrong_shape_are_invalid_params(client, params, where):
    answers = client.request("r", "textDocument/inlineCompletion", params)
    assert error_of(answers, "r") == INVALID_PARAMS
    assert where in answers[0]["error"]["message"]


def test_before_initialize_requests_are_refused_and_notifications_dropped():
    client = Client()
    for method in ["test/echo", "textDocument/inlineCompletion", "nope", "shutdown"]:
        assert error_of(client.request(1, method, INLINE), 1) == NOT_INITIALIZED
    client.open()
    assert client.notify("textDocument/didChange", {}) == []  # dropped, not even checked
    client.initialize()
    assert client.request(2, "test/echo", [1]) == [{"jsonrpc": "2.0", "id": 2, "result": [1]}]


def test_a_second_initialize_is_an_invalid_request(client):
    params = {"processId": None, "capabilities": {}}
    assert error_of(client.request(1, "initialize", params), 1) == INVALID_REQUEST


def test_an_initialize_with_bad_params_can_be_sent_again():
    client = Client()
    assert error_of(client.request(1, "initialize", {"processId": 1.5}), 1) == INVALID_PARAMS
    assert error_of(client.request(2, "test/echo"), 2) == NOT_INITIALIZED
    client.initialize()


def test_after_shutdown_requests_are_invalid_and_exit_exits_with_0(client):
    assert client.request(1, "shutdown") == [{"jsonrpc": "2.0", "id": 1, "result": None}]
    for msg_id, method in enumerate(["test/echo", "shutdown", "initialize", "nope"], 2):
        assert error_of(client.request(msg_id, method), msg_id) == INVALID_REQUEST
    client.open()
    assert client.notify("textDocument/didChange", {"not": "checked"}) == []
    with pytest.raises(SystemExit) as exit_:
        client.notify("exit")
    assert exit_.value.code == 0


@pytest.mark.parametrize("initialized", [False, True])
def test_exit_without_shutdown_exits_with_1(initialized):
    client = Client()
    if initialized:
        client.initialize()
    with pytest.raises(SystemExit) as exit_:
        client.notify("exit")
    assert exit_.value.code == 1


def test_bad_notifications_are_dropped_and_the_user_told_once(client):
    client.open()
    for text in [5, None]:
        change = {"text": text}
        told = client.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [change]},
        )
    assert client.changes == []
    shown = [m for m in client.written if m.get("method") == "window/showMessage"]
    assert len(shown) == 1 and "textDocument/didChange" in shown[0]["params"]["message"]
    assert told == []  # the second is only logged
    assert client.notify("nope", {}) == [] and client.notify("$/nope", "x") == []
    for msg_id in [[1], {"a": 1}, 1.5, True, None]:  # a list once made pygls raise
        assert client.notify("$/cancelRequest", {"id": msg_id}) == []


async def test_a_cancel_notification_cancels_a_request_in_flight(client):
    client.open()
    assert client.request(5, "textDocument/inlineCompletion", INLINE) == []  # in flight
    client.notify("$/cancelRequest", {"id": 5})
    client.notify("$/cancelRequest", {"id": 404})  # unknown: nothing happens
    await asyncio.sleep(0.01)
    (answer,) = client.written[-1:]
    assert answer["id"] == 5 and answer["error"]["code"] == CANCELLED
    client.release.set()
    await asyncio.sleep(0.01)
    assert [m for m in client.written if m.get("id") == 5] == [answer]


async def test_requests_in_flight_are_answered_once_each(client):
    client.open()
    for msg_id in range(10):
        client.request(msg_id, "textDocument/inlineCompletion", INLINE)
    client.release.set()
    await asyncio.sleep(0.01)
    assert sorted(m["id"] for m in client.written if "result" in m) == [0, *range(10)]


async def test_responses_reach_only_requests_we_sent(client):
    future = client.protocol.send_request(
        types.WORKSPACE_CONFIGURATION, types.ConfigurationParams(items=[])
    )
    (sent,) = client.written[-1:]
    assert client.send({"jsonrpc": "2.0", "id": "not ours", "result": 1}) == []
    assert client.send({"jsonrpc": "2.0", "id": sent["id"], "result": [{"a": 1}]}) == []
    assert list(future.result()) == [{"a": 1}]
    # A late or repeated answer is ignored, as is one that claims a request of the client's.
    assert client.send({"jsonrpc": "2.0", "id": sent["id"], "result": [{"b": 2}]}) == []
    client.request(8, "textDocument/inlineCompletion", INLINE)
    assert client.send({"jsonrpc": "2.0", "id": 8, "result": None}) == []
    client.release.set()
    await asyncio.sleep(0.01)
    assert client.written[-1] == {"jsonrpc": "2.0", "id": 8, "result": {"items": []}}


def test_an_error_response_fails_the_request_we_sent(client):
    future = client.protocol.send_request(
        types.WORKSPACE_CONFIGURATION, types.ConfigurationParams(items=[])
    )
    (sent,) = client.written[-1:]
    error = {"code": -32603, "message": "no"}
    assert client.send({"jsonrpc": "2.0", "id": sent["id"], "error": error}) == []
    assert isinstance(future.exception(), Exception)
    assert sent["id"] not in client.protocol._result_types


@pytest.mark.parametrize(
    "recorded", sorted(Path(pytest_lsp.__file__).parent.glob("clients/*.json"))
)
def test_real_clients_initialize_passes_the_strict_checks(recorded):
    """Strict JSON types must not refuse what editors really send (pytest-lsp's recordings)."""
    client = Client()
    capabilities = json.loads(recorded.read_text())["capabilities"]
    params = {"processId": 4242, "capabilities": capabilities, "rootUri": None}
    (answer,) = client.request(1, "initialize", params)
    assert "result" in answer, answer


def did_changes(client: Client, count: int) -> int:
    """Bytes still allocated after `count` didChange notifications, per notification."""
    document = {"uri": URI, "languageId": "python", "version": 0, "text": "x = 0\n"}
    client.notify("textDocument/didOpen", {"textDocument": document})

    def change(version: int) -> None:
        changes = [{"text": f"x = {version % 10}\n"}]  # the same size each time
        client.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": URI, "version": version}, "contentChanges": changes},
        )

    for version in range(100):  # caches fill on the first messages
        change(version)
    client.changes.clear()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for version in range(count):
        change(version)
    client.changes.clear()  # the handler's own record
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) // count


def test_notifications_leave_nothing_behind(client):
    assert did_changes(client, 2000) < 100  # bytes per didChange; pygls alone keeps ~1.8 KB
    assert len(client.protocol._request_futures) <= 1


def test_plain_pygls_keeps_a_future_per_notification():
    """The upstream leak that FimProtocol.forget_finished works around. If this fails, pygls has
    fixed it: remove forget_finished and this test."""
    client = Client(LanguageServerProtocol)
    client.protocol.handle_message(
        client.protocol.structure_message(
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"capabilities": {}}}
        )
    )
    client.protocol.handle_body = lambda body: client.protocol.handle_message(
        json.loads(body, object_hook=client.protocol.structure_message)
    )
    assert did_changes(client, 2000) > 1000
    assert len(client.protocol._request_futures) > 2000
