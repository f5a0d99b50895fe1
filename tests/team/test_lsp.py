"""The team server through the LSP server, end to end: the same completions as the local engine,
cancels that stop the server's generation, and a server that dies, is replaced by the local
fallback (the user told once), and is used again when it is back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from lsprotocol import types

from tests.e2e.lsp import complete, inline, open_document, server_status, start, wait_ready
from tests.team.conftest import API_KEY, ROOT, VllmServer

OPTIONS = {"apiKey": API_KEY, "cacheSalt": "lsp-tests", "multiline": "always"}
DOCUMENTS = [
    ("import os\n\n\ndef list_python_files(folder):\n    ", "\n\nprint(list_python_files('.'))\n"),
    ("class Stack:\n    def push(self, item):\n        self.items.", "\n\n    def pop(self):\n"),
    ("def add(a, b):\n    return a + ", "\n\n\nprint(add(1, 2))\n"),
]


def position(prefix: str) -> tuple[int, int]:
    lines = prefix.split("\n")
    return len(lines) - 1, len(lines[-1])


async def answers(client) -> list[tuple[list[str], list[str]]]:
    """Inline and menu completions at each document's cursor."""
    found = []
    for number, (prefix, suffix) in enumerate(DOCUMENTS):
        uri = f"file:///tmp/team-{number}.py"
        open_document(client, uri, prefix + suffix)
        line, column = position(prefix)
        ghost = await inline(client, uri, line, column)
        menu = await complete(client, uri, line, column)
        found.append(
            ([item.insert_text for item in ghost.items], [i.text_edit.new_text for i in menu.items])
        )
    return found


async def test_completions_through_the_team_server_equal_the_local_engines(vllm, vllm_model_dir):
    team, _ = await start(vllm_model_dir, ["utf-16"], OPTIONS, None, "--backend", vllm.url)
    local, _ = await start(vllm_model_dir, ["utf-16"], {"multiline": "always"})
    try:
        assert (await wait_ready(team))["backend"] == "team server"
        assert (await wait_ready(local))["backend"] == "local"
        from_team, from_local = await answers(team), await answers(local)
        assert from_team == from_local
        assert any(ghost for ghost, _ in from_team), "the tiny model should suggest something"
    finally:
        await team.shutdown_session()
        await local.shutdown_session()


async def test_a_cancelled_request_stops_the_servers_generation(vllm, vllm_model_dir):
    options = OPTIONS | {"maxNewTokens": 1000, "maxTimeMs": 0, "draftTokens": 0}
    client, _ = await start(vllm_model_dir, ["utf-16"], options, None, "--backend", vllm.url)
    try:
        await wait_ready(client)
        uri = "file:///tmp/long.py"
        open_document(client, uri, "x = [\n")
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(1, 0),
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked),
        )
        before = vllm.metric("vllm:generation_tokens_total")
        pending = asyncio.ensure_future(
            client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="long"
            )
        )
        while vllm.metric("vllm:generation_tokens_total") == before:  # it is generating
            await asyncio.sleep(0.05)
        at_cancel = vllm.metric("vllm:generation_tokens_total")
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long"))
        try:
            await asyncio.wait_for(pending, 10)
        except Exception as error:
            assert "cancel" in str(error).lower(), error
        else:  # answered: it ended before the cancel arrived, or the cancel went unheard
            written = vllm.metric("vllm:generation_tokens_total") - before
            if written >= 900 and at_cancel - before < 900:
                pytest.fail(f"the cancelled request ran on to {written:.0f} tokens")
            # The tiny random model can write 1,000 tokens in a blink, or end at once (its end
            # token, or a stop rule such as a loop): nothing was left to cancel.
            pytest.skip(f"the completion ended on its own, {written:.0f} tokens, before the cancel")
        await asyncio.sleep(1.0)  # vLLM sees the closed stream and aborts the request
        stopped = vllm.metric("vllm:generation_tokens_total")
        await asyncio.sleep(2.0)
        assert vllm.metric("vllm:generation_tokens_total") == stopped
        if at_cancel - before >= 900:  # vLLM ran ahead of fim-lsp reading its stream
            pytest.skip("the server had written the whole completion when the cancel was sent")
        assert stopped - before < 900  # not the whole generation
    finally:
        await client.shutdown_session()


async def test_a_server_that_is_down_gets_the_local_fallback_and_one_message(vllm_model_dir):
    down = "http://127.0.0.1:9"
    team, _ = await start(vllm_model_dir, ["utf-16"], OPTIONS, None, "--backend", down)
    local, _ = await start(vllm_model_dir, ["utf-16"], {"multiline": "always"})
    try:
        await wait_ready(team)
        await wait_ready(local)
        assert await answers(team) == await answers(local)  # the first answer comes from it too
        warnings = [m.message for m in team.messages if "cannot reach" in m.message]
        assert len(warnings) == 1 and "local model answers" in warnings[0]
        assert (await server_status(team))["backend"] == "local (server down)"
    finally:
        await team.shutdown_session()
        await local.shutdown_session()


async def test_a_server_killed_then_back_is_used_again(vllm: VllmServer, vllm_model_dir):
    """Last: it kills the session's server and starts it again."""
    client, _ = await start(vllm_model_dir, ["utf-16"], OPTIONS, None, "--backend", vllm.url)
    try:
        await wait_ready(client)
        assert (await answers(client))[0][0], "the team server answered"
        vllm.kill()
        await answers(client)  # answered by the local engine
        assert (await server_status(client))["backend"] == "local (server down)"
        told = [m.message for m in client.messages if "local model answers" in m.message]
        assert len(told) == 1
        await asyncio.get_running_loop().run_in_executor(None, vllm.start)
        deadline = time.monotonic() + 180  # probes back off to at most a minute apart
        while (await server_status(client))["backend"] != "team server":
            assert time.monotonic() < deadline, "the server was not used again"
            await answers(client)  # requests are what start the background probes
            await asyncio.sleep(1)
        assert any("is back" in m.message for m in client.messages)
        assert len([m for m in client.messages if "local model answers" in m.message]) == 1
    finally:
        await client.shutdown_session()


def test_the_team_benchmark_replays_users_through_fim_lsp_against_vllm_and_locally(
    vllm: VllmServer, vllm_model_dir, tmp_path
):
    command = [
        sys.executable, "bench/team.py", "--url", vllm.url, "--model", str(vllm_model_dir),
        "--users", "2", "--keystrokes", "3", "--context", "600", "--out", str(tmp_path),
    ]  # fmt: skip
    environment = os.environ | {"FIM_LSP_API_KEY": API_KEY}
    run = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    rows = json.loads((tmp_path / "team.json").read_text())["rows"]
    assert [(row["users"], row["backend"]) for row in rows] == [(2, "team"), (2, "local")]
    team, local = (row["keystrokes"] for row in rows)
    assert len(team) == len(local) == 6  # every key answered by both
    # The same fp32 model, the same replay: the same prompts; the server's cache served the keys
    # after each user's first.
    assert sorted(k["prompt_tokens"] for k in team) == sorted(k["prompt_tokens"] for k in local)
    assert sum(k["cached_tokens"] for k in team) > 0 and rows[0]["server_cache_share"] > 0
