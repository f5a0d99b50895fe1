"""`fim-lsp doctor --backend URL`: the team server's checks against a fake server, and each
failure saying what to do (tests/team/ runs them against a real vLLM)."""

from __future__ import annotations

import json
import socket

from fim_lsp.doctor import server_report
from fim_lsp.settings import Settings
from tests.fake_vllm import Handler, vllm_stream


def serving(max_model_len: int | None):
    stream = vllm_stream([[5]])

    def script(handler: Handler, body: dict | None) -> None:
        if handler.path == "/v1/models":
            listing = {"data": [{"id": "fim-neox", "max_model_len": max_model_len}]}
            handler.reply(200, json.dumps(listing))
        else:
            stream(handler, body)

    return script


def report(backend: str) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    problems: list[str] = []
    server_report(Settings(backend=backend), lines.append, problems.append)
    return lines, problems


def test_a_working_server(fake_vllm):
    fake_vllm.script = serving(2048)
    lines, problems = report(fake_vllm.url)
    assert problems == []
    assert lines[0].startswith(f"team server: {fake_vllm.url}")
    assert "served model: fim-neox, max length 2048 tokens" in lines
    assert lines[-1].startswith("token-id prompts: accepted; round trip")
    prompts = [body["prompt"] for path, _, body in fake_vllm.requests if body]
    assert prompts == [[0]] * 5


def test_a_server_with_a_short_max_length(fake_vllm):
    fake_vllm.script = serving(1024)
    _, problems = report(fake_vllm.url)
    assert len(problems) == 1 and "--max-model-len 2048" in problems[0]


def test_a_server_that_is_down():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    _, problems = report(url)
    assert len(problems) == 1 and "is it running?" in problems[0]


def test_a_server_that_does_not_stream_token_ids(fake_vllm):
    fake_vllm.script = serving(2048)
    models = fake_vllm.script

    def old_vllm(handler: Handler, body: dict | None) -> None:
        if body is None:
            models(handler, body)
        else:
            handler.start_stream()
            handler.event({"choices": [{"text": "x", "finish_reason": None}]})

    fake_vllm.script = old_vllm
    _, problems = report(fake_vllm.url)
    assert len(problems) == 1 and "return_token_ids needs a recent vLLM" in problems[0]
