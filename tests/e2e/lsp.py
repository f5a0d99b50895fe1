"""Starting the real server over stdio with a real LSP client (pytest-lsp's)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities
from pytest_lsp.client import make_test_lsp_client

PYTHON = sys.executable


async def start(
    model: Path | str,
    encodings: list[str] | None = None,
    options: dict | None = None,
    capabilities: types.ClientCapabilities | None = None,
    *flags: str,
) -> tuple[LanguageClient, types.InitializeResult]:
    client = make_test_lsp_client()
    await client.start_io(
        PYTHON, "-m", "fim_lsp", "serve", "--model", str(model), "--quantization", "none",
        "--max-time-ms", "0", *flags,
    )  # fmt: skip
    if capabilities is None:
        capabilities = client_capabilities("visual-studio-code")
        capabilities.general = types.GeneralClientCapabilities(position_encodings=encodings)
    result = await client.initialize_session(
        types.InitializeParams(capabilities=capabilities, initialization_options=options)
    )
    return client, result


async def wait_ready(client: LanguageClient, timeout: float = 120) -> dict:
    """Poll the server's status request until the model is loaded (or failed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await server_status(client)
        if status["state"] in ("ready", "error"):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the model did not load: {status}")
        await asyncio.sleep(0.1)


async def server_status(client: LanguageClient) -> dict:
    answer = await client.protocol.send_request_async("fimLsp/status")  # no params, like VS Code
    return answer._asdict()  # pygls hands back unknown results as named tuples


def open_document(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
        )
    )


def insert_text(
    client: LanguageClient, uri: str, version: int, where: types.Position, text: str
) -> None:
    """An incremental change that inserts `text` at `where`, as an editor sends a keystroke."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(range=types.Range(where, where), text=text)
            ],
        )
    )


async def inline(client: LanguageClient, uri: str, line: int, character: int):
    return await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, character),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Invoked
            ),
        )
    )


async def complete(client: LanguageClient, uri: str, line: int, character: int):
    return await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, character),
        )
    )
