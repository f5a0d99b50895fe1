"""pygls' language server protocol, without a second copy of every open document.

pygls applies each didOpen/didChange/didClose to documents of its own before our handlers run
(splitting lines with `str.splitlines`, which also breaks at form feeds, and landing an edit past
the end of the last line one character early). The server keeps the one copy (documents.py),
so these notifications go straight to its handlers.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method


class FimProtocol(LanguageServerProtocol):
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
