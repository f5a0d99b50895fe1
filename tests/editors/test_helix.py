"""editors/helix/languages.toml, checked against Helix's documented keys, and the server as
Helix meets it: its client capabilities (utf-8 offered first), completion from the menu.

Helix itself cannot be installed here (no package; crates.io unreachable)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import tomllib
from editor_support import ROOT, utf8_column
from lsprotocol import converters, types
from pygls.lsp.client import LanguageClient

from fim_lsp.settings import SETTINGS

LANGUAGES_TOML = ROOT / "editors" / "helix" / "languages.toml"

# From Helix's book (languages.md): the keys of a [language-server.NAME] table ...
SERVER_KEYS = {"command", "args", "config", "timeout", "environment", "required-root-patterns"}
# ... and of a [[language]] table.
LANGUAGE_KEYS = {
    "name", "language-id", "scope", "injection-regex", "file-types", "shebangs", "roots",
    "auto-format", "diagnostic-severity", "comment-tokens", "comment-token",
    "block-comment-tokens", "indent", "language-servers", "grammar", "formatter", "soft-wrap",
    "text-width", "rulers", "path-completion", "word-completion", "workspace-lsp-roots",
    "persistent-diagnostic-sources", "auto-pairs", "debugger",
}  # fmt: skip
# Names of Helix's built-in languages that the file configures, and servers Helix defines.
HELIX_LANGUAGES = {
    "python", "rust", "go", "javascript", "typescript", "jsx", "tsx", "c", "cpp", "java", "lua",
    "bash", "ruby",
}  # fmt: skip
HELIX_SERVERS = {
    "ruff", "jedi", "pylsp", "ty", "pyright", "basedpyright", "rust-analyzer", "gopls",
    "golangci-lint-lsp", "typescript-language-server", "clangd", "jdtls",
    "lua-language-server", "bash-language-server", "ruby-lsp", "solargraph",
}  # fmt: skip
FEATURES = {
    "format", "goto-definition", "goto-declaration", "goto-type-definition", "goto-reference",
    "goto-implementation", "signature-help", "hover", "document-highlight", "completion",
    "code-action", "workspace-command", "document-symbols", "workspace-symbols", "diagnostics",
    "rename-symbol", "inlay-hints",
}  # fmt: skip

# What Helix's client sends (helix-lsp/src/client.rs), as far as it matters to fim-lsp.
HELIX_CAPABILITIES: dict[str, Any] = {
    "general": {"positionEncodings": ["utf-8", "utf-32", "utf-16"]},
    "workspace": {
        "configuration": True,
        "didChangeConfiguration": {"dynamicRegistration": False},
        "workspaceFolders": True,
        "applyEdit": True,
    },
    "textDocument": {
        "completion": {
            "completionItem": {
                "snippetSupport": True,
                "resolveSupport": {
                    "properties": ["documentation", "detail", "additionalTextEdits"]
                },
                "insertReplaceSupport": True,
                "deprecatedSupport": True,
                "tagSupport": {"valueSet": [1]},
            },
            "completionItemKind": {},
        },
        "hover": {"contentFormat": ["markdown"]},
        "publishDiagnostics": {"versionSupport": True},
    },
    "window": {"workDoneProgress": True},
}


def load() -> dict[str, Any]:
    with LANGUAGES_TOML.open("rb") as file:
        return tomllib.load(file)


def server_names(entry: dict[str, Any]) -> list[str]:
    return [s if isinstance(s, str) else s["name"] for s in entry["language-servers"]]


def test_server_entry_uses_documented_keys() -> None:
    server = load()["language-server"]["fim-lsp"]
    assert set(server) <= SERVER_KEYS
    assert server["command"] == "fim-lsp"
    assert server["args"] == ["serve"]
    assert isinstance(server["timeout"], int) and server["timeout"] >= 20
    # `config` becomes initializationOptions: only the server's own settings, camelCase.
    known = {setting.key for setting in SETTINGS.values()}
    assert set(server.get("config", {})) <= known


def test_languages_use_documented_keys_and_add_fim_lsp() -> None:
    data = load()
    assert set(data) <= {"language-server", "language", "use-grammars"}
    languages = data["language"]
    names = [entry["name"] for entry in languages]
    assert len(names) == len(set(names)), "one entry per language"
    assert set(names) <= HELIX_LANGUAGES
    assert {"python", "rust", "go", "javascript", "typescript", "c", "cpp"} <= set(names)
    for entry in languages:
        assert set(entry) <= LANGUAGE_KEYS, entry
        servers = server_names(entry)
        assert servers[-1] == "fim-lsp", entry["name"]
        assert set(servers[:-1]) <= HELIX_SERVERS, entry["name"]
        for server in entry["language-servers"]:
            if isinstance(server, dict):
                features = set(server.get("only-features", [])) | set(
                    server.get("except-features", [])
                )
                assert features <= FEATURES


SOURCE = 'import os\n\n\ndef greet(name):\n    s = "😀 hi" + na\n    return s\n'
LINE = 4  # 0-based; the cursor goes to its end, after the word "na"


async def completion_like_helix(server_command: list[str], path: Path) -> dict[str, Any]:
    client = LanguageClient("helix", "25.07")

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def _progress(params: types.WorkDoneProgressCreateParams) -> None:
        return None

    await client.start_io(*server_command)
    try:
        capabilities = converters.get_converter().structure(
            HELIX_CAPABILITIES, types.ClientCapabilities
        )
        result = await client.initialize_async(
            types.InitializeParams(
                capabilities=capabilities,
                client_info=types.ClientInfo(name="helix", version="25.07"),
                root_uri=path.parent.as_uri(),
                initialization_options=load()["language-server"]["fim-lsp"]["config"],
            )
        )
        client.initialized(types.InitializedParams())
        uri = path.as_uri()
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=0, text=SOURCE)
            )
        )
        line = SOURCE.splitlines()[LINE]
        position = types.Position(LINE, utf8_column(line, len(line)))
        answer = None
        for _ in range(200):  # until the model is loaded, the answer is empty
            answer = await client.text_document_completion_async(
                types.CompletionParams(types.TextDocumentIdentifier(uri), position)
            )
            items = answer.items if isinstance(answer, types.CompletionList) else answer or []
            if items:
                break
            await asyncio.sleep(0.5)
        await client.shutdown_async(None)
        client.exit(None)
        return {"initialize": result, "answer": answer, "position": position}
    finally:
        await client.stop()


def test_completion_with_helix_capabilities(
    tmp_path: Path, server_command: list[str], complete_json
) -> None:
    path = tmp_path / "greet.py"
    path.write_bytes(SOURCE.encode("utf-8"))
    line = SOURCE.splitlines()[LINE]
    expected = complete_json(path, LINE + 1, len(line) + 1)
    assert expected["completion"]

    out = asyncio.run(completion_like_helix(server_command, path))

    assert out["initialize"].capabilities.position_encoding == "utf-8"
    assert out["initialize"].capabilities.completion_provider is not None
    answer = out["answer"]
    items = answer.items if isinstance(answer, types.CompletionList) else answer
    assert items, "no completion item before the deadline"
    item = items[0]
    edit = item.text_edit
    assert isinstance(edit, types.TextEdit)
    # The item replaces the word typed before the cursor ("na"), so Helix's filter keeps it;
    # columns are utf-8 bytes, past the 4-byte emoji.
    word_start = utf8_column(line, len(line) - 2)
    assert edit.range.start == types.Position(LINE, word_start)
    cursor = out["position"].character
    offset = len("\n".join(SOURCE.split("\n")[: LINE + 1]))
    replaced = SOURCE[offset : offset + expected["replace_chars"]]
    assert edit.range.end == types.Position(LINE, cursor + len(replaced.encode("utf-8")))
    assert edit.new_text == "na" + expected["completion"]
    assert (item.filter_text or item.label).startswith("na")
