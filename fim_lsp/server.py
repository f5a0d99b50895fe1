"""The language server: thin LSP handlers around the pipeline, the model loaded in the background."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import uuid
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fim_lsp import __version__
from fim_lsp.document import Cursor, PositionError, apply_change, offset_at, reply_range
from fim_lsp.engine import EngineError
from fim_lsp.logs import configure_logging
from fim_lsp.pipeline import Completer, Completion, ShownSuggestions, unsuitable
from fim_lsp.prompt import TokenizerError
from fim_lsp.scheduler import Scheduler
from fim_lsp.settings import Settings, camel_case, from_client, merge, shown

log = logging.getLogger(__name__)

STATUS = "fimLsp/status"  # request: the model's state; notification: its changes
WORD_BEFORE = re.compile(r"[\w$]*$")


@dataclasses.dataclass
class OpenDocument:
    text: str
    language_id: str


class FimLanguageServer(LanguageServer):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__("fim-lsp", __version__)
        self.settings = settings or Settings()
        self.completer: Completer | None = None
        self.state = "starting"  # starting, loading, ready, error
        self.state_message = ""
        self.scheduler = Scheduler()
        self.shown = ShownSuggestions()
        self.loads = 0  # counts loads, so that only the newest one installs its model
        self.tasks: set[asyncio.Task] = set()
        # Open documents by uri, kept here rather than in pygls' workspace, which applies edits
        # by other line ends than LSP's (document.apply_change).
        self.documents: dict[str, OpenDocument] = {}

    # Settings ---------------------------------------------------------------------------------

    def apply_options(self, options: Any, source: str) -> None:
        """Merge client options over the current settings; reload the model if it changed."""
        settings, warnings = merge(self.settings, from_client(options))
        for warning in warnings:
            self.tell(types.MessageType.Warning, f"{source}: {warning}")
        reload = settings.reloads_model(self.settings) and self.state != "starting"
        if settings.log_file != self.settings.log_file:
            try:
                configure_logging(settings.log_file)
            except OSError as error:
                self.tell(
                    types.MessageType.Warning,
                    f"{source}: cannot log to {settings.log_file}: {error}",
                )
                settings = dataclasses.replace(settings, log_file=self.settings.log_file)
        changed = [
            f"{camel_case(field.name)}={shown(field.name, getattr(settings, field.name))}"
            for field in dataclasses.fields(settings)
            if getattr(settings, field.name) != getattr(self.settings, field.name)
        ]
        if changed:  # in the client's log, so that a user can see a change arrive
            self.window_log_message(
                types.LogMessageParams(types.MessageType.Log, f"{source}: {', '.join(changed)}")
            )
        self.settings = settings
        if self.completer is not None:
            self.completer.settings = settings
        if reload:
            self.start_loading()

    # Loading ----------------------------------------------------------------------------------

    def start_loading(self) -> None:
        task = asyncio.ensure_future(self.load_model())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def load_model(self) -> None:
        self.loads += 1
        load = self.loads
        settings = self.settings
        self.completer = None  # frees the old model before the new one loads
        self.set_state("loading", f"loading {settings.model}", 0)
        token = await self.begin_progress(f"loading {settings.model}")
        loop = asyncio.get_running_loop()

        def progress(message: str, percentage: int | None) -> None:
            log.info("%s", message)
            loop.call_soon_threadsafe(self.report_progress, token, message, percentage)

        try:
            completer = await asyncio.wrap_future(
                self.scheduler.submit(lambda: Completer.load(settings, progress))
            )
        except (EngineError, TokenizerError) as error:
            self.fail(token, str(error))
            return
        except Exception as error:  # an unexpected failure must not take the server down
            log.exception("loading %s failed", settings.model)
            self.fail(token, f"loading {settings.model} failed: {error!r}")
            return
        if load != self.loads:
            return  # the settings changed while it loaded; the newer load takes over
        completer.settings = self.settings
        self.completer = completer
        precision = completer.engine.precision
        ready = f"{settings.model} ready on {precision.device} ({precision.quantization})"
        self.end_progress(token, ready)
        engine = completer.engine  # says why, where a kernel can't run
        self.window_log_message(
            types.LogMessageParams(
                types.MessageType.Info,
                f"{ready}; attention: {engine.attention.reason}; decode steps: {engine.steps}",
            )
        )
        self.set_state("ready", ready)

    def fail(self, token: str | None, message: str) -> None:
        self.end_progress(token, "failed")
        self.tell(types.MessageType.Error, f"{message}. Completions are off until this is fixed.")
        self.set_state("error", message)

    async def begin_progress(self, title: str) -> str | None:
        """A work-done progress token, or None when the client cannot show progress."""
        if not getattr(self.client_capabilities.window, "work_done_progress", False):
            return None
        token = f"fim-lsp-{uuid.uuid4()}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception as error:  # the client refused: carry on without progress
            log.warning("no progress report: %s", error)
            return None
        self.work_done_progress.begin(
            token,
            types.WorkDoneProgressBegin(title="fim-lsp", message=title, percentage=0),
        )
        return token

    def report_progress(self, token: str | None, message: str, percentage: int | None) -> None:
        self.window_log_message(types.LogMessageParams(types.MessageType.Log, message))
        self.set_state("loading", message, percentage)
        if token is not None:
            self.work_done_progress.report(
                token, types.WorkDoneProgressReport(message=message, percentage=percentage)
            )

    def end_progress(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    def set_state(self, state: str, message: str, percentage: int | None = None) -> None:
        self.state, self.state_message = state, message
        self.protocol.notify(STATUS, self.status() | {"percentage": percentage})

    def status(self) -> dict[str, Any]:
        engine = self.completer.engine if self.completer else None
        return {
            "state": self.state,
            "message": self.state_message,
            "version": __version__,
            "model": self.settings.model,
            "device": engine.precision.device if engine else None,
            "quantization": engine.precision.quantization if engine else None,
            "attention": engine.attention.reason if engine else None,
        }

    def tell(self, kind: types.MessageType, message: str) -> None:
        """Show the user a message (and log it)."""
        log.log(logging.ERROR if kind == types.MessageType.Error else logging.WARNING, message)
        self.window_show_message(types.ShowMessageParams(kind, f"fim-lsp: {message}"))

    # Completing -------------------------------------------------------------------------------

    async def suggest(
        self, uri: str, position: types.Position
    ) -> tuple[Completion, str, int] | None:
        """The completion at `position` with the document text and cursor offset it was made
        for, or None (model not ready, unknown document, nothing to suggest, superseded)."""
        completer, document = self.completer, self.documents.get(uri)
        if completer is None or document is None:
            return None
        text = document.text
        if reason := unsuitable(text):
            log.info("no completion in %s: %s", uri, reason)
            return None
        try:
            offset = offset_at(text, position, self.workspace.position_encoding or "utf-16")
        except PositionError as error:
            log.warning("%s: %s", uri, error)
            return None
        cursor = Cursor(text[:offset], text[offset:], document.language_id)
        completion = self.shown.follow(uri, cursor)
        if completion is not None:
            self.scheduler.supersede(uri)  # the user is typing what was shown: no model run
        else:
            try:
                completion = await self.scheduler.run(
                    uri,
                    lambda cancel: completer.complete(cursor, cancel),
                    debounce_s=self.settings.debounce_ms / 1000,
                )
            except EngineError as error:
                self.tell(types.MessageType.Error, str(error))
                return None
        if completion is not None:
            self.log_completion(uri, completion)
        if completion is None or not completion.text:
            self.shown.forget(uri)
            return None
        self.shown.remember(uri, cursor, completion)
        return completion, text, offset

    def log_completion(self, uri: str, completion: Completion) -> None:
        """One log line per answer, with the numbers benchmarks and bug reports need."""
        stats = {
            "uri": uri,
            "prompt_tokens": len(completion.prompt_ids),
            "cached_tokens": completion.cached_tokens,
            "generated_tokens": completion.generated_tokens,
            "drafted_tokens": completion.drafted_tokens,
            "accepted_tokens": completion.accepted_tokens,
            "stop_reason": completion.stop_reason,
            "timings_ms": {name: round(ms, 1) for name, ms in completion.timings_ms.items()},
        }
        self.window_log_message(
            types.LogMessageParams(types.MessageType.Log, f"completion {json.dumps(stats)}")
        )


server = FimLanguageServer()


@server.feature(types.INITIALIZE)
def initialize(ls: FimLanguageServer, params: types.InitializeParams) -> None:
    ls.apply_options(params.initialization_options, "initializationOptions")


@server.feature(types.INITIALIZED)
def initialized(ls: FimLanguageServer, params: types.InitializedParams) -> None:
    ls.start_loading()


@server.feature(types.SHUTDOWN)
def shutdown(ls: FimLanguageServer, params: None) -> None:
    ls.scheduler.shutdown()


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
    ls.apply_options(options, "workspace/didChangeConfiguration")


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: FimLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    document = params.text_document
    ls.documents[document.uri] = OpenDocument(document.text, document.language_id)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: FimLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    document = ls.documents.get(params.text_document.uri)
    if document is None:
        log.warning("change to %s, which is not open", params.text_document.uri)
        return
    encoding = ls.workspace.position_encoding or "utf-16"
    for change in params.content_changes:  # in order, each on the text the last one left
        document.text = apply_change(document.text, change, encoding)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: FimLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.documents.pop(uri, None)
    ls.scheduler.supersede(uri)  # a generation for it stops; its request gets an empty answer
    ls.shown.forget(uri)


@server.feature(STATUS)
def status(ls: FimLanguageServer, params: Any = None) -> dict[str, Any]:
    return ls.status()


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(
    ls: FimLanguageServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    found = await ls.suggest(params.text_document.uri, params.position)
    if found is None:
        return types.InlineCompletionList(items=[])
    completion, text, offset = found
    encoding = ls.workspace.position_encoding or "utf-16"
    where = reply_range(text, offset, completion.replace_chars, encoding)
    return types.InlineCompletionList(
        items=[types.InlineCompletionItem(insert_text=completion.text, range=where)]
    )


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def completion(ls: FimLanguageServer, params: types.CompletionParams) -> types.CompletionList:
    found = await ls.suggest(params.text_document.uri, params.position)
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    completion, text, offset = found
    # Menus filter items by the word typed before the cursor: replace that word too, so the
    # item starts with what the user typed and survives the client's filtering.
    word = WORD_BEFORE.search(text, max(0, offset - 200), offset)
    start = word.start() if word else offset
    encoding = ls.workspace.position_encoding or "utf-16"
    where = reply_range(text, start, offset - start + completion.replace_chars, encoding)
    new_text = text[start:offset] + completion.text
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
