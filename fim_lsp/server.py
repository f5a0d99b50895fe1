"""The language server: its state, and handlers that convert LSP types at the edge."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fim_lsp import __version__
from fim_lsp.documents import Document, PositionError, content, line_range
from fim_lsp.orchestrator import Orchestrator
from fim_lsp.pipeline import Completion
from fim_lsp.protocol import FimProtocol
from fim_lsp.settings import Settings, from_client

log = logging.getLogger(__name__)

STATUS = "fimLsp/status"  # request: the model's state; notification: its changes
WORD_BEFORE = re.compile(r"[\w$]*$")
LEVELS = {
    "error": types.MessageType.Error,
    "warning": types.MessageType.Warning,
    "info": types.MessageType.Info,
}


class FimLanguageServer(LanguageServer):
    """The open documents (one copy, documents.py) and the orchestrator."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__("fim-lsp", __version__, protocol_cls=FimProtocol)
        self.documents: dict[str, Document] = {}
        self.orchestrator = Orchestrator(settings or Settings(), LspClient(self))

    @property
    def encoding(self) -> str:
        """The position encoding negotiated at initialize."""
        return self.workspace.position_encoding or "utf-16"


class LspClient:
    """The orchestrator's `Client`: what it tells the user, as LSP messages."""

    def __init__(self, server: LanguageServer):
        self.server = server

    def show(self, level: str, message: str) -> None:
        log.log(logging.ERROR if level == "error" else logging.WARNING, message)
        self.server.window_show_message(
            types.ShowMessageParams(LEVELS[level], f"fim-lsp: {message}")
        )

    def log(self, message: str) -> None:
        self.server.window_log_message(types.LogMessageParams(types.MessageType.Log, message))

    def status(self, status: dict[str, Any]) -> None:
        self.server.protocol.notify(STATUS, status)

    async def begin_progress(self, title: str) -> object | None:
        if not getattr(self.server.client_capabilities.window, "work_done_progress", False):
            return None
        token = f"fim-lsp-{uuid.uuid4()}"
        try:
            await self.server.work_done_progress.create_async(token)
        except Exception as error:  # the client refused: carry on without progress
            log.warning("no progress report: %r", error)
            return None
        self.server.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title="fim-lsp", message=title, percentage=0)
        )
        return token

    def report_progress(self, token: object, message: str, percentage: int | None) -> None:
        report = types.WorkDoneProgressReport(message=message, percentage=percentage)
        self.server.work_done_progress.report(str(token), report)

    def end_progress(self, token: object, message: str) -> None:
        self.server.work_done_progress.end(str(token), types.WorkDoneProgressEnd(message=message))


server = FimLanguageServer()


# ---- lifecycle and settings ---------------------------------------------------------------------


@server.feature(types.INITIALIZE)
def initialize(ls: FimLanguageServer, params: types.InitializeParams) -> None:
    folders = params.workspace_folders or []
    ls.orchestrator.workspace = (folders[0].uri if folders else None) or params.root_uri or ""
    ls.orchestrator.configure(from_client(params.initialization_options), "initializationOptions")


@server.feature(types.INITIALIZED)
def initialized(ls: FimLanguageServer, params: types.InitializedParams) -> None:
    ls.orchestrator.start_loading()


@server.feature(types.SHUTDOWN)
def shutdown(ls: FimLanguageServer, params: None) -> None:
    ls.orchestrator.shutdown()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(
    ls: FimLanguageServer, params: types.DidChangeConfigurationParams
) -> None:
    options = from_client(params.settings)
    if not options and getattr(ls.client_capabilities.workspace, "configuration", False):
        # A client that only says "something changed" is asked for our section.
        request = types.ConfigurationParams([types.ConfigurationItem(section="fimLsp")])
        answers = await ls.workspace_configuration_async(request)
        options = from_client(answers[0] if answers else None)
    ls.orchestrator.configure(options, "workspace/didChangeConfiguration")


@server.feature(STATUS)
def status(ls: FimLanguageServer, params: Any = None) -> dict[str, Any]:
    return ls.orchestrator.status()


# ---- documents ------------------------------------------------------------------------------------


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: FimLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    ls.documents[item.uri] = Document(item.text, item.language_id, item.version)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: FimLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    document = ls.documents.get(params.text_document.uri)
    if document is None:
        log.warning("change to %s, which is not open", params.text_document.uri)
        return
    for change in params.content_changes:  # in order, each on the text the last one left
        document.apply(change, ls.encoding)
    document.version = params.text_document.version


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: FimLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.documents.pop(params.text_document.uri, None)
    ls.orchestrator.forget(params.text_document.uri)


# ---- completions ----------------------------------------------------------------------------------


async def suggest(
    ls: FimLanguageServer, uri: str, position: types.Position
) -> tuple[Completion, str, int, int] | None:
    """The completion at `position`, with the cursor's line as it was asked about, the cursor's
    index in it and the line's number; None when there is nothing to show."""
    document = ls.documents.get(uri)
    if document is None:
        return None
    try:
        place = document.place(position, ls.encoding)
    except PositionError as error:
        log.warning("%s: %s", uri, error)
        return None
    line = content(document.lines[place.line])  # the document may change while this waits
    completion = await ls.orchestrator.complete(uri, document, place)
    return None if completion is None else (completion, line, place.index, place.line)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(
    ls: FimLanguageServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    found = await suggest(ls, params.text_document.uri, params.position)
    if found is None:
        return types.InlineCompletionList(items=[])
    completion, line, index, number = found
    where = line_range(number, line, index, index + completion.replace_chars, ls.encoding)
    return types.InlineCompletionList(
        items=[types.InlineCompletionItem(insert_text=completion.text, range=where)]
    )


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def completion(ls: FimLanguageServer, params: types.CompletionParams) -> types.CompletionList:
    found = await suggest(ls, params.text_document.uri, params.position)
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    completion, line, index, number = found
    # Menus filter items by the word typed before the cursor: replace that word too, so the
    # item starts with what the user typed and survives the client's filtering.
    word = WORD_BEFORE.search(line, max(0, index - 200), index)
    start = word.start() if word else index
    where = line_range(number, line, start, index + completion.replace_chars, ls.encoding)
    new_text = line[start:index] + completion.text
    return types.CompletionList(
        is_incomplete=True,  # ask again as the user types: the suggestion depends on every key
        items=[
            types.CompletionItem(
                label=menu_label(new_text),
                kind=types.CompletionItemKind.Text,
                detail="fim-lsp",
                filter_text=new_text,
                sort_text="0",
                preselect=True,
                insert_text_format=types.InsertTextFormat.PlainText,
                text_edit=types.TextEdit(range=where, new_text=new_text),
            )
        ],
    )


def menu_label(text: str) -> str:
    """The suggestion's first line as typed (clients like lsp-mode insert the label itself),
    or its first line with code when it starts on a new line."""
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.strip():
        return first
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
