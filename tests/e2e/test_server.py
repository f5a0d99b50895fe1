"""The real server over stdio, with the real engine on a tiny model, in each position encoding."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import client_capabilities

from tests.e2e.lsp import (
    complete,
    inline,
    insert_text,
    open_document,
    server_status,
    start,
    wait_ready,
)

URI = "file:///tmp/greet.py"
# An emoji (two UTF-16 units, four UTF-8 bytes) and CRLF line ends before the cursor.
TEXT = 'def greet(name):\r\n    """Say hi 👋 to name."""\r\n    message = "hi 👋 " + \r\n    return message\r\n'
LINE = 2
CURSOR_CHARS = len('    message = "hi 👋 " + ')


def units(text: str, encoding: str) -> int:
    return {
        "utf-8": len(text.encode("utf-8")),
        "utf-16": len(text.encode("utf-16-le")) // 2,
        "utf-32": len(text),
    }[encoding]


@pytest.fixture(scope="module")
def cli_completion(tiny_model_dir, tmp_path_factory) -> dict:
    """What `fim-lsp complete --json` says at the same file and position."""
    path = tmp_path_factory.mktemp("doc") / "greet.py"
    path.write_bytes(TEXT.encode())
    where = f"{path}:{LINE + 1}:{CURSOR_CHARS + 1}"
    out = subprocess.run(
        [sys.executable, "-m", "fim_lsp", "complete", where, "--json", "--quantization", "none",
         "--model", str(tiny_model_dir), "--max-time-ms", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
async def test_inline_and_menu_completion_match_the_cli(tiny_model_dir, cli_completion, encoding):
    assert cli_completion["completion"], "the tiny model should suggest something here"
    client, result = await start(tiny_model_dir, [encoding])
    try:
        capabilities = result.capabilities
        assert capabilities.position_encoding == encoding
        assert capabilities.inline_completion_provider is not None
        assert capabilities.completion_provider is not None
        assert capabilities.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        assert (await wait_ready(client))["state"] == "ready"
        open_document(client, URI, TEXT)
        column = units(TEXT.split("\r\n")[LINE][:CURSOR_CHARS], encoding)

        answer = await inline(client, URI, LINE, column)
        (item,) = answer.items
        assert item.insert_text == cli_completion["completion"]
        assert item.range.start == types.Position(LINE, column)
        replaced = TEXT.split("\r\n")[LINE][CURSOR_CHARS:][: cli_completion["replace_chars"]]
        assert item.range.end == types.Position(LINE, column + units(replaced, encoding))

        menu = await complete(client, URI, LINE, column)
        (entry,) = menu.items
        # Nothing but spaces and `+` before the cursor: the edit starts at the cursor.
        assert entry.text_edit.new_text == cli_completion["completion"]
        assert entry.filter_text == entry.text_edit.new_text
        assert entry.text_edit.range.start == types.Position(LINE, column)
        assert menu.is_incomplete
    finally:
        await client.shutdown_session()


async def test_menu_item_keeps_the_word_typed_so_clients_do_not_filter_it_away(tiny_model_dir):
    client, _ = await start(tiny_model_dir, ["utf-8"])  # Helix offers utf-8 first
    try:
        await wait_ready(client)
        text = "import os\nvalue = os.pa"
        open_document(client, URI, text)
        menu = await complete(client, URI, 1, len("value = os.pa"))
        for entry in menu.items:
            assert entry.text_edit.new_text.startswith("pa")
            assert entry.filter_text.startswith("pa")
            assert entry.text_edit.range.start == types.Position(1, len("value = os."))
    finally:
        await client.shutdown_session()


async def test_requests_before_the_model_is_ready_get_an_empty_answer(tiny_model_dir):
    client, _ = await start(tiny_model_dir, ["utf-16"])
    try:
        open_document(client, URI, TEXT)
        status = await server_status(client)
        answer = await inline(client, URI, LINE, CURSOR_CHARS)
        if status["state"] == "ready":
            pytest.skip("the model loaded before the first request could be sent")
        assert answer.items == ()
        assert (await wait_ready(client))["state"] == "ready"
        assert client.progress_reports, "loading should report work-done progress"
        (reports,) = client.progress_reports.values()
        assert isinstance(reports[0], types.WorkDoneProgressBegin)
        assert isinstance(reports[-1], types.WorkDoneProgressEnd)
    finally:
        await client.shutdown_session()


async def test_unknown_documents_and_bad_positions_get_empty_answers(tiny_model_dir):
    client, _ = await start(tiny_model_dir, ["utf-16"])
    try:
        await wait_ready(client)
        assert (await inline(client, "file:///never/opened.py", 0, 0)).items == ()
        open_document(client, URI, TEXT)
        assert (await inline(client, URI, 99, 0)).items == ()
        open_document(client, "file:///tmp/blob.bin", "\x00\x01binary\x00")
        assert (await inline(client, "file:///tmp/blob.bin", 0, 3)).items == ()
        assert (await wait_ready(client))["state"] == "ready"  # still up
    finally:
        await client.shutdown_session()


async def test_incremental_edits_are_applied_before_completing(tiny_model_dir, cli_completion):
    client, _ = await start(tiny_model_dir, ["utf-16"])
    try:
        await wait_ready(client)
        typed = TEXT.replace('"hi 👋 " + ', "")
        open_document(client, URI, typed)
        where = types.Position(LINE, units("    message = ", "utf-16"))
        insert_text(client, URI, 2, where, '"hi 👋 " + ')
        column = units(TEXT.split("\r\n")[LINE][:CURSOR_CHARS], "utf-16")
        (item,) = (await inline(client, URI, LINE, column)).items
        assert item.insert_text == cli_completion["completion"]
    finally:
        await client.shutdown_session()


async def test_edits_after_a_form_feed_land_where_the_client_put_them(tiny_model_dir):
    """A form feed (a page break) is not a line end in LSP: an edit below one must land on the
    line the client means, so the edited document completes as the same text opened whole."""
    client, _ = await start(tiny_model_dir, ["utf-16"])
    try:
        await wait_ready(client)
        paged = TEXT.replace('"""Say hi', '"""Say\f hi')
        open_document(client, URI, paged.replace('"hi 👋 " + ', ""))
        insert_text(client, URI, 2, types.Position(LINE, len("    message = ")), '"hi 👋 " + ')
        open_document(client, "file:///tmp/whole.py", paged)
        column = units(TEXT.split("\r\n")[LINE][:CURSOR_CHARS], "utf-16")
        (edited,) = (await inline(client, URI, LINE, column)).items
        (whole,) = (await inline(client, "file:///tmp/whole.py", LINE, column)).items
        assert edited.insert_text == whole.insert_text
    finally:
        await client.shutdown_session()


@pytest.mark.parametrize(
    "model, expected",
    [
        ("CarperAI/FIM-NeoX-1.3B", "not in the local cache"),
        ("/nonexistent/folder/model", "neither a folder nor a hub id"),
    ],
)
async def test_missing_model_is_explained_and_the_server_stays_up(model, expected, tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(tmp_path)
    try:
        client, _ = await start(model, ["utf-16"])
    finally:
        del os.environ["HF_HUB_OFFLINE"], os.environ["HF_HOME"]
    try:
        status = await wait_ready(client)
        assert status["state"] == "error"
        assert any(expected in message.message for message in client.messages)
        assert client.messages[-1].type == types.MessageType.Error
        open_document(client, URI, TEXT)
        assert (await inline(client, URI, 0, 0)).items == ()
        assert (await complete(client, URI, 0, 0)).items == ()
    finally:
        await client.shutdown_session()


async def test_broken_model_folder_is_explained(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    client, _ = await start(tmp_path, ["utf-16"])
    try:
        assert (await wait_ready(client))["state"] == "error"
        assert any("tokenizer" in m.message or "config" in m.message for m in client.messages)
    finally:
        await client.shutdown_session()


async def test_cancel_request_is_answered_and_the_worker_is_free_again(tiny_model_dir):
    options = {"maxNewTokens": 1000, "multiline": "always", "contextLength": 2048}
    client, _ = await start(tiny_model_dir, ["utf-16"], options)
    try:
        await wait_ready(client)
        open_document(client, URI, TEXT)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(URI),
            position=types.Position(LINE, CURSOR_CHARS),
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked),
        )
        pending = asyncio.ensure_future(
            client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="long-one"
            )
        )
        # Past the debounce (30 ms), well before the 1,000 tokens end (0.5 s with the C step).
        await asyncio.sleep(0.15)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-one"))
        with pytest.raises(Exception, match="cancel"):
            await asyncio.wait_for(pending, 10)
        started = asyncio.get_running_loop().time()
        await server_status(client)
        await inline(client, URI, 0, 0)
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        await client.shutdown_session()


async def test_settings_change_live_and_bad_values_are_reported(tiny_model_dir, tmp_path):
    log_file = tmp_path / "fim-lsp.log"
    options = {"maxNewTokens": "many", "logFile": str(log_file)}
    client, _ = await start(tiny_model_dir, ["utf-16"], options)
    try:
        assert any("maxNewTokens" in m.message for m in client.messages)
        await wait_ready(client)
        assert "model ready" in log_file.read_text()
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(
                settings={"fimLsp": {"maxNewTokens": 2, "apiKey": "secret-key"}}
            )
        )
        open_document(client, URI, TEXT)
        answer = await inline(client, URI, LINE, CURSOR_CHARS)
        tokens = answer.items[0].insert_text if answer.items else ""
        assert len(tokens) < 40, "two tokens at most"
        changes = [m.message for m in client.log_messages if "didChangeConfiguration" in m.message]
        assert changes == ["workspace/didChangeConfiguration: maxNewTokens=2, apiKey=<hidden>"]
        assert "secret-key" not in log_file.read_text()
    finally:
        await client.shutdown_session()


async def test_non_finite_out_of_range_and_mistyped_settings_are_refused(tiny_model_dir):
    bad = {"temperature": -1, "maxNewTokens": 10**6, "debounceMs": 10**9, "logFile": 5}
    assert not (Path.cwd() / "5").exists()
    client, _ = await start(tiny_model_dir, ["utf-16"])
    try:
        await wait_ready(client)
        # NaN and Infinity are not JSON: the message that carries them is refused whole.
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"fimLsp": {"temperature": math.nan}})
        )
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"fimLsp": bad})
        )
        open_document(client, URI, TEXT)
        # A debounce of 10^9 ms would leave this unanswered; a NaN temperature would fail it.
        answer = await asyncio.wait_for(inline(client, URI, LINE, CURSOR_CHARS), 60)
        assert answer.items and answer.items[0].insert_text
        warnings = [m.message for m in client.messages]
        for key in bad:
            assert any(f"setting {key!r}" in message for message in warnings), key
        assert not (Path.cwd() / "5").exists()
    finally:
        await client.shutdown_session()


async def test_neovim_capabilities_negotiate_utf8(tiny_model_dir):
    client, result = await start(tiny_model_dir, capabilities=client_capabilities("neovim@v0.11.0"))
    try:
        assert result.capabilities.position_encoding == "utf-8"
    finally:
        await client.shutdown_session()


async def test_typing_the_start_of_a_suggestion_is_answered_without_the_model(tiny_model_dir):
    client, _ = await start(tiny_model_dir, ["utf-16"])
    try:
        await wait_ready(client)
        open_document(client, URI, TEXT)
        where = types.Position(LINE, units(TEXT.split("\r\n")[LINE][:CURSOR_CHARS], "utf-16"))
        (shown,) = (await inline(client, URI, LINE, where.character)).items
        typed = shown.insert_text[:2]
        insert_text(client, URI, 2, where, typed)
        column = where.character + units(typed, "utf-16")
        (rest,) = (await inline(client, URI, LINE, column)).items
        assert rest.insert_text == shown.insert_text[2:]
        assert rest.range.start == types.Position(LINE, column)
    finally:
        await client.shutdown_session()


async def test_device_cuda_without_a_gpu_is_explained(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    client, _ = await start(tiny_model_dir, ["utf-16"], None, None, "--device", "cuda")
    try:
        assert (await wait_ready(client))["state"] == "error"
        assert any("no CUDA GPU" in m.message and "cpu" in m.message for m in client.messages)
        open_document(client, URI, TEXT)
        assert (await inline(client, URI, LINE, 0)).items == ()
    finally:
        await client.shutdown_session()
