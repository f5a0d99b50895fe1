"""The team server client against a small in-process fake server: the request it sends, the
stream it reads, stops and cancels that close the connection, and every way a server can fail."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import time

import pytest

from fim_lsp import team
from fim_lsp.backend import BackendUnavailable, GenerationOptions
from fim_lsp.team import TeamBackend, default_cache_salt
from tests.fake_vllm import Handler, chunk, endless, headers_then_nothing, vllm_stream

PROMPT = [50277, 32488, 50278, 1545, 50279]
OPTIONS = GenerationOptions(max_new_tokens=8, end_id=0)


def generate(backend: TeamBackend, options: GenerationOptions = OPTIONS, **kwargs):
    return backend.generate(
        PROMPT,
        options,
        kwargs.get("should_stop", lambda ids: False),
        kwargs.get("cancel", threading.Event()),
    )


# The request -------------------------------------------------------------------------------


def test_the_request_carries_the_prompt_ids_and_the_options(fake_vllm, monkeypatch):
    monkeypatch.delenv(team.API_KEY_VARIABLE, raising=False)
    backend = TeamBackend(fake_vllm.url, api_key="key-1", cache_salt="salt-1")
    generate(backend, GenerationOptions(8, end_id=0, temperature=0.2, seed=7))
    path, headers, body = fake_vllm.requests[0]
    assert path == "/v1/completions"
    assert headers["Authorization"] == "Bearer key-1"
    assert body == {
        "prompt": PROMPT,
        "max_tokens": 8,
        "temperature": 0.2,
        "stop_token_ids": [0],
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "seed": 7,
        "cache_salt": "salt-1",
    }


def test_the_key_comes_from_the_environment_when_no_option_sets_it(fake_vllm, monkeypatch):
    monkeypatch.setenv(team.API_KEY_VARIABLE, "from-env")
    generate(TeamBackend(fake_vllm.url))
    generate(TeamBackend(fake_vllm.url, api_key="from-option"))
    assert [headers["Authorization"] for _, headers, _ in fake_vllm.requests] == [
        "Bearer from-env",
        "Bearer from-option",
    ]


def test_no_key_no_salt_no_seed_sends_none(fake_vllm, monkeypatch):
    monkeypatch.delenv(team.API_KEY_VARIABLE, raising=False)
    generate(TeamBackend(fake_vllm.url))
    _, headers, body = fake_vllm.requests[0]
    assert "Authorization" not in headers
    assert body is not None and not {"cache_salt", "seed"} & set(body)


def test_completions_reuse_one_connection(fake_vllm):
    backend = TeamBackend(fake_vllm.url)
    for _ in range(3):
        assert generate(backend).stop_reason == "length"
    assert fake_vllm.connections == 1


# The stream --------------------------------------------------------------------------------


def test_streamed_ids_usage_and_timings(fake_vllm):
    fake_vllm.script = vllm_stream([[11], [12, 13], [14]], cached=2)
    generation = generate(TeamBackend(fake_vllm.url))
    assert generation.ids == [11, 12, 13, 14]
    assert (generation.prompt_tokens, generation.cached_tokens) == (len(PROMPT), 2)
    assert generation.stop_reason == "length"
    assert set(generation.timings_ms) == {"prefill", "decode", "total"}


def test_the_end_token_ends_the_middle_and_is_not_returned(fake_vllm):
    fake_vllm.script = vllm_stream([[11], [12], [0]], finish="stop")
    generation = generate(TeamBackend(fake_vllm.url))
    assert (generation.ids, generation.stop_reason) == ([11, 12], "end")


def test_max_new_tokens_is_kept_even_if_the_server_sends_more(fake_vllm):
    fake_vllm.script = vllm_stream([[11, 12, 13, 14, 15]], finish="length")
    generation = generate(TeamBackend(fake_vllm.url), GenerationOptions(3, end_id=0))
    assert (generation.ids, generation.stop_reason) == ([11, 12, 13], "length")


def test_a_stop_rule_closes_the_stream_at_once(fake_vllm):
    fake_vllm.script = endless
    seen: list[list[int]] = []

    def should_stop(ids: list[int]) -> bool:
        seen.append(list(ids))
        return len(ids) == 3

    generation = generate(
        TeamBackend(fake_vllm.url), GenerationOptions(1000, end_id=0), should_stop=should_stop
    )
    assert (generation.ids, generation.stop_reason) == ([1, 2, 3], "stop")
    assert seen == [[1], [1, 2], [1, 2, 3]]  # called after every token with all of them
    assert fake_vllm.disconnected.wait(2), "the server went on streaming to a closed request"


def test_cancel_from_another_thread_closes_the_stream(fake_vllm):
    fake_vllm.script = endless
    cancel, streaming = threading.Event(), threading.Event()
    cancelled_at: list[float] = []

    def cancel_once_streaming() -> None:
        streaming.wait()
        cancelled_at.append(time.perf_counter())
        cancel.set()

    threading.Thread(target=cancel_once_streaming).start()

    def should_stop(ids: list[int]) -> bool:
        streaming.set()
        return False

    generation = generate(
        TeamBackend(fake_vllm.url),
        GenerationOptions(1000, 0),
        should_stop=should_stop,
        cancel=cancel,
    )
    assert time.perf_counter() - cancelled_at[0] < 1  # polled every 20 ms
    assert generation.stop_reason == "cancelled" and generation.ids
    assert fake_vllm.disconnected.wait(2)


def test_cancel_interrupts_a_wait_for_the_first_token(fake_vllm):
    fake_vllm.script = headers_then_nothing
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.perf_counter()
    backend = TeamBackend(fake_vllm.url, first_token_timeout_s=30)
    generation = generate(backend, cancel=cancel)
    assert (generation.ids, generation.stop_reason) == ([], "cancelled")
    assert time.perf_counter() - started < 1.5


def test_a_cancelled_request_is_not_sent_on(fake_vllm):
    cancel = threading.Event()
    cancel.set()
    assert generate(TeamBackend(fake_vllm.url), cancel=cancel).stop_reason == "cancelled"


# Failures ----------------------------------------------------------------------------------


def refuse(status: int, text: str, content_type: str = "application/json"):
    return lambda handler, body: handler.reply(status, text, content_type)


def vllm_error(message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}})


@pytest.mark.parametrize(
    "script, expected",
    [
        (refuse(401, '{"error": "Unauthorized"}'), "refused the API key (HTTP 401)"),
        (refuse(404, '{"detail": "Not Found"}'), "has no /v1/completions (HTTP 404)"),
        (refuse(400, vllm_error("max_tokens=9 is too long")), "max_tokens=9 is too long"),
        (refuse(500, "Internal Server Error", "text/plain"), "failed (HTTP 500)"),
        (refuse(200, "<html>a router's login page</html>", "text/html"), "not server-sent"),
        (lambda h, b: (h.start_stream(), h.send("data: {not json\n\n")), "not JSON"),
        (lambda h, b: (h.start_stream(), h.event([1, 2])), "not a JSON object"),
        (lambda h, b: (h.start_stream(), h.event({"id": "x"})), "without choices"),
        (lambda h, b: (h.start_stream(), h.event(chunk(None))), "no token ids"),  # type: ignore[arg-type]
        (lambda h, b: (h.start_stream(), h.event(chunk([1], echo=[7]))), "a prompt other than"),
        (lambda h, b: (h.start_stream(), h.event(json.loads(vllm_error("oops")))), "failed: oops"),
        (lambda h, b: (h.start_stream(), h.event(chunk([1], "abort"))), "ended early (abort)"),
        (lambda h, b: (h.start_stream(), h.event(chunk([1])), h.end_stream()), "ended before"),
    ],
)
def test_a_server_that_cannot_answer_says_what_to_do(fake_vllm, script, expected):
    fake_vllm.script = script
    with pytest.raises(BackendUnavailable, match=re.escape(expected)):
        generate(TeamBackend(fake_vllm.url))


def test_a_server_that_is_down():
    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(BackendUnavailable, match=r"cannot reach the team server .* is it running"):
        generate(TeamBackend(url))


def test_a_server_killed_mid_stream(fake_vllm):
    def dies(handler: Handler, body: dict | None) -> None:
        handler.start_stream()
        handler.event(chunk([11], echo=body and body["prompt"]))
        handler.connection.shutdown(socket.SHUT_RDWR)  # no end of the chunked body

    fake_vllm.script = dies
    with pytest.raises(BackendUnavailable, match=r"connection to the team server .* broke"):
        generate(TeamBackend(fake_vllm.url))


def test_no_first_token_within_the_budget(fake_vllm):
    fake_vllm.script = headers_then_nothing
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=r"no first token .* within 0.3 s"):
        generate(TeamBackend(fake_vllm.url, first_token_timeout_s=0.3))
    assert time.perf_counter() - started < 1.5


def test_a_stream_that_stalls(fake_vllm):
    fake_vllm.script = vllm_stream([[11], [12]], delay_s=1.0)
    with pytest.raises(BackendUnavailable, match=r"no next token .* within 0.3 s"):
        generate(TeamBackend(fake_vllm.url, first_token_timeout_s=3, stall_timeout_s=0.3))


def test_no_headers_at_all_is_slow_too(fake_vllm):
    fake_vllm.script = lambda handler, body: time.sleep(10)
    with pytest.raises(BackendUnavailable, match="no first token"):
        generate(TeamBackend(fake_vllm.url, first_token_timeout_s=0.3))


# Models and probes -------------------------------------------------------------------------


def test_served_models_and_their_max_length(fake_vllm):
    listing = {"object": "list", "data": [{"id": "fim", "max_model_len": 2048}, {"id": "x"}]}
    fake_vllm.script = refuse(200, json.dumps(listing))
    assert TeamBackend(fake_vllm.url).served_models() == [
        team.ServedModel("fim", 2048),
        team.ServedModel("x", None),
    ]


@pytest.mark.parametrize(
    "script, expected",
    [
        (refuse(200, "<html></html>", "text/html"), "/v1/models answered"),
        (refuse(401, "{}"), "refused the API key"),
        (refuse(404, "{}"), "has no /v1/models"),
    ],
)
def test_served_models_failures(fake_vllm, script, expected):
    fake_vllm.script = script
    with pytest.raises(BackendUnavailable, match=expected):
        TeamBackend(fake_vllm.url).served_models()


def test_a_probe_is_a_one_token_completion(fake_vllm):
    round_trip_ms = TeamBackend(fake_vllm.url).probe()
    assert round_trip_ms > 0
    _, _, body = fake_vllm.requests[0]
    assert body is not None and (body["prompt"], body["max_tokens"]) == ([0], 1)


# The cache salt ----------------------------------------------------------------------------


def test_the_default_cache_salt_is_per_workspace_and_unguessable(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    team.salt_secret.cache_clear()
    try:
        salt = default_cache_salt("/home/ada/project")
        assert salt == default_cache_salt("/home/ada/project")
        assert salt != default_cache_salt("/home/ada/other")
        secret = tmp_path / "fim-lsp" / "team-cache-salt"
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        assert len(secret.read_text()) == 64 and secret.read_text() not in salt
        team.salt_secret.cache_clear()  # a new session reads the same secret
        assert default_cache_salt("/home/ada/project") == salt
        secret.write_text("another machine's secret")
        team.salt_secret.cache_clear()
        assert default_cache_salt("/home/ada/project") != salt
    finally:
        team.salt_secret.cache_clear()
