"""The team backend against a real vLLM server: the ids it sends, greedy tokens equal to the
local engine's, the server's prefix cache, stops and cancels that end the server's generation,
and a server that is slow, refuses the key, dies mid-stream and comes back."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from fim_lsp import team
from fim_lsp.backend import BackendUnavailable, GenerationOptions
from fim_lsp.doctor import server_report
from fim_lsp.prompt import build_prompt
from fim_lsp.settings import Settings
from fim_lsp.team import TeamBackend
from tests import tiny_model
from tests.team.conftest import API_KEY, SERVED_NAME, VllmServer

CARD = json.loads(
    (tiny_model.SHARED / "assets" / "fim-neox-1.3b" / "model_card_test_vectors.json").read_text()
)
BUDGET = 2048 - 64
NEVER = lambda ids: False  # noqa: E731
LONG = 1500  # tokens: a generation that would run for many seconds on this CPU


@pytest.fixture
def backend(vllm: VllmServer) -> TeamBackend:
    return TeamBackend(vllm.url, api_key=API_KEY, cache_salt="user-a", first_token_timeout_s=30)


def run(backend: TeamBackend, prompt: list[int], max_new_tokens: int, **kwargs):
    return backend.generate(
        prompt,
        GenerationOptions(max_new_tokens, end_id=0),
        kwargs.get("should_stop", NEVER),
        kwargs.get("cancel", threading.Event()),
    )


def test_the_card_prompt_goes_out_as_prompt_pys_token_ids(backend, fim_tokenizer):
    prompt = build_prompt(fim_tokenizer, CARD["prefix"], CARD["suffix"], BUDGET).ids
    assert prompt == CARD["model_input_ids (SPM: SUF s PRE p MID)"]
    sent: list[dict] = []
    backend.client.event_hooks["request"].append(lambda request: sent.append(request))
    generation = run(backend, prompt, 4)
    assert json.loads(sent[0].content)["prompt"] == prompt
    # The server echoed the prompt it ran (the client checks it is the one sent) and counted it.
    assert generation.prompt_tokens == 28 and generation.stop_reason in ("length", "end")


CURSORS = [
    (CARD["prefix"], CARD["suffix"]),
    ("import os\n\n\ndef list_python_files(folder):\n    ", "\n\nprint(list_python_files('.'))\n"),
    ("class Stack:\n    def push(self, item):\n        self.items.", "\n\n    def pop(self):\n"),
    ("fn main() {\n    let v = vec![1, 2, 3];\n    for x in ", " {\n    }\n}\n"),
]


def test_greedy_tokens_equal_the_local_engines(backend, vllm_model_dir, fim_tokenizer):
    from fim_lsp.engine import load_engine

    engine = load_engine(
        str(vllm_model_dir), fim_tokenizer.vocab_size, device="cpu", quantization="none"
    )
    for prefix, suffix in CURSORS:
        prompt = build_prompt(fim_tokenizer, prefix, suffix, BUDGET).ids
        local = engine.generate(prompt, GenerationOptions(16, end_id=fim_tokenizer.eot_id))
        remote = run(backend, prompt, 16)
        assert remote.ids == local.ids, fim_tokenizer.decode(prompt)
        assert remote.stop_reason == local.stop_reason


def long_file(seed: int) -> str:
    """About 1,000 tokens of code that no other test sends (the server's cache is shared)."""
    return "".join(
        f"def step_{seed}_{n}(value):\n    return value * {n} + {seed}\n\n" for n in range(60)
    )


def test_a_second_keystroke_reads_the_prompt_from_the_servers_cache(backend, vllm, fim_tokenizer):
    prefix, suffix = long_file(1) + "def main():\n    resul", "\n"
    first = run(backend, build_prompt(fim_tokenizer, prefix, suffix, BUDGET).ids, 2)
    typed = build_prompt(fim_tokenizer, prefix + "t", suffix, BUDGET).ids
    second = run(backend, typed, 2)
    # The CPU backend caches whole blocks of 128 tokens (16 on a GPU).
    assert first.cached_tokens == 0
    assert second.cached_tokens >= second.prompt_tokens - 128 - 2 > 0
    # Another user's salt shares nothing: their timing cannot tell what this user typed.
    other_user = TeamBackend(vllm.url, api_key=API_KEY, cache_salt="user-b")
    assert run(other_user, typed, 2).cached_tokens == 0


def wait_until_idle(vllm: VllmServer, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while vllm.metric("vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the server still generates for a closed request"
        time.sleep(0.05)


def assert_generation_stopped(vllm: VllmServer, before: float, returned: int) -> None:
    """The server runs nothing and its generated-token counter stays put, far below LONG."""
    wait_until_idle(vllm)
    stopped_at = vllm.metric("vllm:generation_tokens_total")
    time.sleep(1.0)
    assert vllm.metric("vllm:generation_tokens_total") == stopped_at
    assert returned <= stopped_at - before < LONG / 4


def test_a_stop_rule_ends_the_servers_generation(backend, vllm):
    before = vllm.metric("vllm:generation_tokens_total")
    generation = run(backend, [5, 6, 7], LONG, should_stop=lambda ids: len(ids) == 5)
    assert (len(generation.ids), generation.stop_reason) == (5, "stop")
    assert_generation_stopped(vllm, before, 5)


def test_a_cancel_ends_the_servers_generation(backend, vllm):
    cancel, streaming = threading.Event(), threading.Event()
    threading.Thread(target=lambda: streaming.wait() and cancel.set()).start()

    def should_stop(ids: list[int]) -> bool:
        if len(ids) == 3:
            streaming.set()  # from another thread, as a newer keystroke cancels
        return False

    before = vllm.metric("vllm:generation_tokens_total")
    generation = run(backend, [8, 9, 10], LONG, should_stop=should_stop, cancel=cancel)
    assert generation.stop_reason == "cancelled" and len(generation.ids) >= 3
    assert_generation_stopped(vllm, before, len(generation.ids))


def test_a_wrong_or_missing_key_is_refused(vllm, monkeypatch):
    monkeypatch.delenv(team.API_KEY_VARIABLE, raising=False)
    for key in ("wrong-key", None):
        with pytest.raises(BackendUnavailable, match="refused the API key"):
            run(TeamBackend(vllm.url, api_key=key), [1, 2], 2)


def test_a_server_that_is_down():
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        run(TeamBackend("http://127.0.0.1:9", api_key=API_KEY), [1, 2], 2)


def test_a_frozen_server_is_slow_and_a_cancel_does_not_wait_for_it(backend, vllm):
    vllm.signal(signal.SIGSTOP)
    try:
        impatient = TeamBackend(vllm.url, api_key=API_KEY, first_token_timeout_s=1)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"no first token .* within 1 s"):
            run(impatient, [1, 2, 3], 4)
        assert time.monotonic() - started < 3
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        started = time.monotonic()
        assert run(backend, [1, 2, 3], 4, cancel=cancel).stop_reason == "cancelled"
        assert time.monotonic() - started < 1.5
    finally:
        vllm.signal(signal.SIGCONT)
    assert backend.probe() > 0


def test_doctor_checks_the_server(vllm):
    lines: list[str] = []
    problems: list[str] = []
    server_report(Settings(backend=vllm.url, api_key=API_KEY), lines.append, problems.append)
    assert problems == []
    assert f"served model: {SERVED_NAME}, max length 2048 tokens" in lines
    assert lines[-1].startswith("token-id prompts: accepted; round trip")


def test_a_server_killed_mid_stream_is_unavailable(backend, vllm):
    """Last in the session: it kills the server (test_lsp.py's test brings one back first)."""

    def kill_after_three(ids: list[int]) -> bool:
        if len(ids) == 3:
            vllm.kill()
        return False

    try:
        generation = run(backend, [11, 12, 13], LONG, should_stop=kill_after_three)
    except BackendUnavailable:
        pass
    else:  # the server had sent its whole stream, or ended it, before it died: nothing was cut
        whole = generation.stop_reason == "end" or len(generation.ids) == LONG
        assert whole, (
            f"a cut stream taken as whole: {generation.stop_reason}, {len(generation.ids)}"
        )
        pytest.skip(
            f"the completion ended ({generation.stop_reason}, {len(generation.ids)} tokens) "
            "before the kill cut it"
        )
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        backend.probe()
