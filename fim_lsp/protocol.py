"""JSON-RPC 2.0 and LSP's lifecycle on top of pygls: every request the client sends gets one
answer, and the open documents have one copy (the server's), not a second one in pygls."""

from __future__ import annotations

import contextvars
import json
import logging
import typing
from collections.abc import Callable, Generator
from typing import Any, TypeGuard

import cattrs
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)

ErrorCode = types.ErrorCodes
Id = typing.Union[int, str]  # noqa: UP007 (as lsprotocol's fields spell it)
OptionalId = typing.Optional[Id]  # noqa: UP045
REQUEST_TYPES = frozenset(typing.get_args(types.REQUESTS))
NOTIFICATION_TYPES = frozenset(typing.get_args(types.NOTIFICATIONS))


class InvalidParams(ValueError):
    """The params of a message do not have the shape its method takes."""


class FimProtocol(LanguageServerProtocol):
    """Checks each message before pygls dispatches it, and answers what pygls would leave unanswered.

    pygls decides request or notification by the shape its types give a message, so a request whose
    params do not fit, or that names a notification (`$/setTrace` with an id), got no answer. Here
    the raw JSON decides: a message with an id is a request and is answered, with an error when its
    envelope, its place in the lifecycle (new, running, shut down), its method or its params are
    wrong. JSON types are checked strictly: a float is not an integer and a number is not a string.
    """

    def __init__(self, server: Any, converter: cattrs.Converter) -> None:
        strict_json_types(converter)
        super().__init__(server, converter)
        self.phase = "new"  # "running" once initialize is accepted, "shut down" after shutdown
        self.told: set[str] = set()  # kinds of client problem already shown to the user

    def handle_body(self, body: bytes) -> None:
        """Check one message body (a frame's content) and hand it to pygls' handlers."""
        self.forget_finished()
        try:
            data = json.loads(body, parse_constant=reject_constant)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            return self.answer_error(
                None, ErrorCode.ParseError, f"the message is not JSON: {error}"
            )
        if not isinstance(data, dict):
            return self.answer_error(
                None, ErrorCode.InvalidRequest, "a message must be a JSON object"
            )
        if "method" not in data and ("result" in data or "error" in data):
            return self.receive_response(data)
        msg_id = data.get("id")
        if "id" in data and not is_valid_id(msg_id):
            message = f"an id must be an integer or a string, not {json_type(msg_id)}"
            return self.answer_error(None, ErrorCode.InvalidRequest, message)
        if data.get("jsonrpc") != "2.0":
            message = 'a message must carry "jsonrpc": "2.0"'
            return self.answer_error(msg_id, ErrorCode.InvalidRequest, message)
        method = data.get("method")
        if not isinstance(method, str):
            message = f"a method must be a string, not {json_type(method)}"
            return self.answer_error(msg_id, ErrorCode.InvalidRequest, message)
        if is_valid_id(msg_id):
            self.receive_request(msg_id, method, data.get("params"))
        else:
            self.receive_notification(method, data.get("params"))

    def receive_request(self, msg_id: int | str, method: str, params: Any) -> None:
        if refusal := self.refuse_request(method):
            return self.answer_error(msg_id, *refusal)
        try:
            structured = self.structure_params(method, params)
        except InvalidParams as error:
            return self.answer_error(msg_id, ErrorCode.InvalidParams, f"{method}: {error}")
        if method == types.INITIALIZE:
            self.phase = "running"
        elif method == types.SHUTDOWN:
            self.phase = "shut down"
        # Each message runs in its own context, as in pygls (the request id lives there).
        contextvars.copy_context().run(self._handle_request, msg_id, method, structured)

    def refuse_request(self, method: str) -> tuple[ErrorCode, str] | None:
        """Why a request cannot run now, in LSP's order: lifecycle first, then the method."""
        if self.phase == "new" and method != types.INITIALIZE:
            return ErrorCode.ServerNotInitialized, f"{method}: the server is not initialized yet"
        if self.phase == "shut down":
            return ErrorCode.InvalidRequest, f"{method}: the server is shut down; only exit is left"
        if method == types.INITIALIZE and self.phase == "running":
            return ErrorCode.InvalidRequest, "initialize: the server is already initialized"
        # LSP: a request whose method starts with $/ is answered MethodNotFound.
        if method.startswith("$/") or not self.handles(method, request=True):
            return ErrorCode.MethodNotFound, f"{method}: no such request"
        return None

    def receive_notification(self, method: str, params: Any) -> None:
        if method != types.EXIT and self.phase != "running":
            # LSP: notifications before initialize are dropped (except exit), and none follow shutdown.
            log.warning("dropped %s: the server is %s", method, self.phase)
            return
        if method != types.CANCEL_REQUEST and not self.handles(method, request=False):
            level = logging.DEBUG if method.startswith("$/") else logging.WARNING
            log.log(level, "ignored notification %s: no handler", method)
            return
        try:
            structured = self.structure_params(method, params)
        except InvalidParams as error:
            return self.tell_once("notification", f"ignored {method}: {error}")
        contextvars.copy_context().run(self._handle_notification, method, structured)

    def receive_response(self, data: dict[str, Any]) -> None:
        """The client's answer to a request of ours; never answered back."""
        msg_id = data.get("id")
        future = self._request_futures.get(msg_id) if is_valid_id(msg_id) else None
        # Only ids we sent: the same table holds the client's own requests in flight.
        if msg_id not in self._result_types or future is None or future.done():
            log.warning("ignored a response to no request of ours (id %s)", json.dumps(msg_id)[:40])
            return
        try:
            if data.get("jsonrpc") != "2.0":
                raise ValueError('no "jsonrpc": "2.0"')
            message = self.structure_message(data)  # pygls': typed by the request we sent
        except Exception as problem:
            error = types.ResponseError(ErrorCode.InvalidParams, f"malformed response: {problem}")
            message = types.ResponseErrorMessage(id=msg_id, error=error)
        self._result_types.pop(msg_id, None)  # pygls leaves it after an error response
        self._handle_response(
            msg_id, getattr(message, "result", None), getattr(message, "error", None)
        )

    def handles(self, method: str, request: bool) -> bool:
        """Whether a handler takes `method` as a request (or as a notification)."""
        if method not in self.fm.features and method not in self.fm.builtin_features:
            return False
        message_type = self.get_message_type(method)
        if message_type is None:
            return True  # a method of our own (fimLsp/status) is taken either way
        return message_type in (REQUEST_TYPES if request else NOTIFICATION_TYPES)

    def structure_params(self, method: str, params: Any) -> Any:
        """The params as lsprotocol's type for `method`; methods of our own get the plain JSON."""
        if params is not None and not isinstance(params, dict | list):
            raise InvalidParams(f"params must be an object or an array, not {json_type(params)}")
        params_type: Any = types.METHOD_TO_TYPES.get(method, (None, None, None))[2]
        if params_type is None:
            return params
        try:
            # Absent params count as {}: fine where every field is optional (initialized).
            return self._converter.structure({} if params is None else params, params_type)
        except cattrs.BaseValidationError as error:
            problems = cattrs.transform_error(error, path="params")
            raise InvalidParams("; ".join(problems)[:500]) from None
        except Exception as error:  # a hook that raised something else: still the params' fault
            raise InvalidParams(f"{type(error).__name__}: {error}"[:500]) from None

    def answer_error(self, msg_id: int | str | None, code: ErrorCode, message: str) -> None:
        log.warning("answered %s with %s: %s", json.dumps(msg_id), code.name, message)
        # A plain dict: pygls' response type would leave out an id of null, which JSON-RPC requires.
        error = {"code": int(code), "message": message}
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": error})

    def tell_once(self, kind: str, message: str) -> None:
        """Log a problem with what the client sent, and show the user the first of each kind."""
        log.warning("%s", message)
        if kind not in self.told:
            self.told.add(kind)
            text = f"fim-lsp: {message} (further problems like this are only logged)"
            self.notify(
                types.WINDOW_SHOW_MESSAGE, types.ShowMessageParams(types.MessageType.Warning, text)
            )

    # pygls applies each didOpen/didChange/didClose to documents of its own before our handlers
    # run (splitting lines with `str.splitlines`, which also breaks at form feeds, and landing an
    # edit past the end of the last line one character early). The server keeps the one copy
    # (documents.py), so these notifications go straight to its handlers.

    def to_handler(self, method: str, params: Any) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        yield from self.to_handler(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        yield from self.to_handler(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        yield from self.to_handler(types.TEXT_DOCUMENT_DID_CLOSE, params)

    def forget_finished(self) -> None:
        """Drop the futures of finished handlers.

        pygls stores every handler's future in `_request_futures` but removes it only when it
        answers a request or a cancel: each notification (and each step of a builtin that calls a
        handler of ours) left one behind, about 1.8 KB per didChange. A finished future there is
        never needed again, so this sweep is safe; it costs one pass over those still running.
        """
        for msg_id, future in list(self._request_futures.items()):  # list(): handler threads add
            if future.done() and self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]


def strict_json_types(converter: cattrs.Converter) -> None:
    """Make `converter` refuse JSON values of the wrong type instead of coercing them.

    cattrs would turn a line of 1.5 into 1, "3" into 3, true into 1 and 5 into "5": a position or
    an edit the client never meant. lsprotocol takes any value as an id: a list one made pygls'
    $/cancelRequest raise.
    """
    names = {int: "an integer", str: "a string", bool: "a boolean", float: "a number"}
    json_types = {int: (int,), str: (str,), bool: (bool,), float: (float, int)}

    def hook(base: type) -> Callable[[Any, type], Any]:
        def structure(value: Any, kind: type) -> Any:
            if type(value) not in json_types[base]:  # type(): true is not an integer here
                raise TypeError(f"expected {names[base]}, got {json_type(value)}")
            return kind(value)  # float(1) is 1.0; an enum of ints or strings checks its values

        return structure

    for base in json_types:
        converter.register_structure_hook(base, hook(base))

    def structure_id(value: Any, _type: type) -> Any:  # request ids, progress tokens
        if not is_valid_id(value) and not (value is None and _type is OptionalId):
            raise TypeError(f"expected an integer or a string, got {json_type(value)}")
        return value

    converter.register_structure_hook(Id, structure_id)
    converter.register_structure_hook(OptionalId, structure_id)


def is_valid_id(value: Any) -> TypeGuard[int | str]:
    """JSON-RPC ids in LSP: an integer or a string (a JSON true is not an integer)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an integer", float: "a number with a fraction", str: "a string"}
    names |= {list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
