"""The orchestrator with a fake backend and a fake client: a request's flow and the load state."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from fim_lsp.documents import Document, Place
from fim_lsp.errors import EngineError
from fim_lsp.orchestrator import Orchestrator
from fim_lsp.pipeline import MIN_COLD_TOKENS, Completer
from fim_lsp.settings import Settings
from tests.fakes import DEMO_TOKENIZER, FakeBackend

SETTINGS = Settings(model="fake", debounce_ms=0, max_time_ms=0)
TEXT = "def total(xs):\n    result = 0\n    \n    return result\n"
CURSOR = Place(2, 4)  # the empty indented line


class FakeClient:
    """Records what the orchestrator tells the user."""

    def __init__(self, answers_progress: bool = True):
        self.shown: list[tuple[str, str]] = []
        self.logs: list[str] = []
        self.states: list[dict[str, Any]] = []
        self.progress: list[tuple[str, str]] = []
        self.answers_progress = answers_progress

    def show(self, level: str, message: str) -> None:
        self.shown.append((level, message))

    def log(self, message: str) -> None:
        self.logs.append(message)

    def status(self, status: dict[str, Any]) -> None:
        self.states.append(status)

    async def begin_progress(self, title: str) -> object | None:
        if not self.answers_progress:
            await asyncio.Event().wait()  # a client that never answers
        self.progress.append(("begin", title))
        return "token"

    def report_progress(self, token: object, message: str, percentage: int | None) -> None:
        self.progress.append(("report", message))

    def end_progress(self, token: object, message: str) -> None:
        self.progress.append(("end", message))


def loader(backend: FakeBackend, delay: float = 0.0):
    def load(settings: Settings, progress, tell) -> Completer:
        progress("reading weights", 50)
        if delay:
            threading.Event().wait(delay)
        return Completer(settings, DEMO_TOKENIZER, backend, 2048, {"device": "cpu"})

    return load


async def ready(backend: FakeBackend, client: FakeClient | None = None) -> Orchestrator:
    orchestrator = Orchestrator(SETTINGS, client or FakeClient(), loader(backend, delay=0.05))
    await orchestrator.start_loading()
    assert orchestrator.state == "ready"
    return orchestrator


async def test_loading_reports_progress_and_ends_ready():
    client = FakeClient()
    orchestrator = await ready(FakeBackend(""), client)
    assert [state["state"] for state in client.states] == ["loading", "loading", "ready"]
    assert client.progress[0] == ("begin", "loading fake")
    assert ("report", "reading weights") in client.progress
    assert client.progress[-1] == ("end", "fake ready on cpu (None)")
    assert orchestrator.status()["device"] == "cpu"


async def test_a_client_that_never_answers_the_progress_request_does_not_stop_loading():
    client = FakeClient(answers_progress=False)
    orchestrator = Orchestrator(SETTINGS, client, loader(FakeBackend("")))
    await asyncio.wait_for(orchestrator.start_loading(), 5)
    assert orchestrator.state == "ready" and client.progress == []


async def test_a_failed_load_is_explained_and_completions_are_empty():
    def broken(settings: Settings, progress, tell) -> Completer:
        raise EngineError("no such model: run fim-lsp download")

    client = FakeClient()
    orchestrator = Orchestrator(SETTINGS, client, broken)
    await orchestrator.start_loading()
    assert orchestrator.state == "error"
    assert client.shown == [
        ("error", "no such model: run fim-lsp download. Completions are off until this is fixed.")
    ]
    assert await orchestrator.complete("doc", Document(TEXT, "python"), CURSOR) is None


async def test_a_request_flows_through_gate_prompt_backend_and_finish():
    backend = FakeBackend("for x in xs:\n        result += x\n    return result\n")
    orchestrator = await ready(backend)
    completion = await orchestrator.complete("doc", Document(TEXT, "python"), CURSOR)
    assert completion is not None
    assert completion.text == "for x in xs:\n        result += x"  # the suffix's return is cut
    prompt = backend.prompts[0]
    assert prompt[0] == DEMO_TOKENIZER.suf_id and prompt[-1] == DEMO_TOKENIZER.mid_id
    (line,) = [entry for entry in orchestrator.client.logs if entry.startswith("completion ")]
    assert f'"stop_reason": "{completion.stop_reason}"' in line


async def test_crlf_documents_get_crlf_suggestions():
    backend = FakeBackend("for x in xs:\n        result += x\n")
    orchestrator = await ready(backend)
    document = Document(TEXT.replace("\n", "\r\n"), "python")
    completion = await orchestrator.complete("doc", document, CURSOR)
    assert completion is not None and completion.text == "for x in xs:\r\n        result += x"


async def test_typing_the_suggestion_is_answered_without_the_backend():
    backend = FakeBackend("for x in xs:\n        result += x\n")
    orchestrator = await ready(backend)
    document = Document(TEXT, "python")
    shown = await orchestrator.complete("doc", document, CURSOR)
    await asyncio.sleep(0.2)  # the worker's idle work (speculating an accept) is done
    runs = len(backend.prompts)
    typed = Document(TEXT.replace("    \n", "    for x\n"), "python")
    rest = await orchestrator.complete("doc", typed, Place(2, 9))
    assert shown is not None and rest is not None
    assert rest.text == shown.text[len("for x") :] and rest.stop_reason == "typed-through"
    assert len(backend.prompts) == runs


async def test_a_newer_request_answers_the_older_one_at_once():
    started = threading.Event()
    backend = FakeBackend("x = 1\n" * 30, started, hold=0.05)
    orchestrator = await ready(backend)
    document = Document(TEXT, "python")
    older = asyncio.ensure_future(orchestrator.complete("a", document, CURSOR))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    newer = asyncio.ensure_future(orchestrator.complete("b", document, CURSOR))
    assert await asyncio.wait_for(older, 0.5) is None
    assert (await newer) is not None  # it ran (after it, the worker may go on speculating)


@pytest.mark.parametrize("text", ["a\x00b", "x" * 8_000_001])
async def test_unsuitable_documents_get_nothing_and_never_reach_the_backend(text):
    backend = FakeBackend("anything")
    orchestrator = await ready(backend)
    assert await orchestrator.complete("doc", Document(text), Place(0, 1)) is None
    assert backend.prompts == []


async def test_settings_warnings_are_shown_and_changes_logged():
    client = FakeClient()
    orchestrator = Orchestrator(SETTINGS, client, loader(FakeBackend("")))
    orchestrator.configure({"maxNewTokens": 5, "noSuchThing": 1}, "initializationOptions")
    assert orchestrator.settings.max_new_tokens == 5
    assert client.shown == [
        ("warning", "initializationOptions: unknown setting 'noSuchThing' ignored")
    ]
    assert client.logs == ["initializationOptions: maxNewTokens=5"]


async def test_changing_the_model_reloads_and_the_newest_load_wins():
    loads: list[str] = []

    def load(settings: Settings, progress, tell) -> Completer:
        loads.append(settings.model)
        return Completer(settings, DEMO_TOKENIZER, FakeBackend(""), 2048, {"model": settings.model})

    orchestrator = Orchestrator(SETTINGS, FakeClient(), load)
    await orchestrator.start_loading()
    orchestrator.configure({"model": "other"}, "workspace/didChangeConfiguration")
    orchestrator.configure({"model": "third"}, "workspace/didChangeConfiguration")
    await asyncio.gather(*orchestrator.tasks)
    assert loads == ["fake", "third"]  # "other" was superseded before it started
    assert orchestrator.completer is not None and orchestrator.completer.about["model"] == "third"


async def test_a_cold_prompt_past_the_budget_is_answered_short_and_warmed_for_the_next_key():
    backend = FakeBackend("total = 0\n")
    backend.rate = 10.0  # ms per token: 100 tokens fit the default 1,000 ms budget
    orchestrator = await ready(backend)
    body = "".join(f"def f{n}(x):\n    return x * {n}\n\n" for n in range(200))
    document = Document(body + "def main():\n    \n", "python")
    place = Place(document.text.count("\n") - 1, 4)
    first = await orchestrator.complete("doc", document, place)
    assert first is not None and "past coldBudgetMs 1000" in first.context
    answered, full = backend.prompts[0], first.warm_ids
    assert full is not None and len(answered) <= max(100, MIN_COLD_TOKENS) < len(full)
    await asyncio.sleep(0.1)  # the worker is idle: the full prompt is warmed
    assert backend.warmed == [full]
    log = [entry for entry in orchestrator.client.logs if entry.startswith("completion ")]
    assert '"context": "' in log[0]
    again = await orchestrator.complete("doc", document, place)  # now cached: full length
    assert again is not None and again.context == "" and backend.prompts[-1] == full


async def test_the_suggestion_after_an_accept_is_ready_when_the_user_accepts():
    backend = FakeBackend("for x in xs:\n        result += x\n    return result\n")
    orchestrator = await ready(backend)
    shown = await orchestrator.complete("doc", Document(TEXT, "python"), CURSOR)
    assert shown is not None
    await asyncio.sleep(0.2)  # idle: the worker computes what follows an accept
    assert len(backend.prompts) == 2
    accepted = TEXT.replace("    \n", "    " + shown.text + "\n", 1)
    line = 2 + shown.text.count("\n")
    column = len(shown.text.split("\n")[-1]) + (4 if "\n" not in shown.text else 0)
    following = await orchestrator.complete(
        "doc", Document(accepted, "python"), Place(line, column)
    )
    assert following is not None and following.stop_reason == "speculated"
    assert len(backend.prompts) == 2  # no model run for it
    other = await orchestrator.complete("doc", Document(TEXT, "python"), CURSOR)
    assert other is not None and other.stop_reason != "speculated"  # used once only


async def test_after_a_short_answer_the_accept_is_ready_at_the_same_size():
    backend = FakeBackend("total = 0\n")
    backend.rate = 10.0  # a cold budget of 150 tokens
    backend.warm = lambda prompt, options, cancel: None  # the full prompt not grown yet
    orchestrator = await ready(backend)
    head = "".join(f"def f{n}(x):\n    return x * {n}\n\n" for n in range(200))
    text = head + "def main():\n    \n"
    place = Place(text.count("\n") - 1, 4)
    shown = await orchestrator.complete("doc", Document(text, "python"), place)
    assert shown is not None and shown.warm_ids is not None and shown.text  # a short answer
    await asyncio.sleep(0.2)  # idle: the worker computes what follows an accept
    accepted = head + "def main():\n    " + shown.text + "\n"
    after = Place(place.line, place.index + len(shown.text))
    following = await orchestrator.complete("doc", Document(accepted, "python"), after)
    assert following is not None and following.stop_reason == "speculated"


@pytest.mark.parametrize("answer", ["for x in xs:\n", ""])  # a suggestion, and none
async def test_freed_memory_goes_back_to_the_system_while_idle_now_and_then(answer, monkeypatch):
    orchestrator = await ready(FakeBackend(answer))
    trims: list[int] = []
    monkeypatch.setattr(orchestrator.memory, "trim", trims.append)
    monkeypatch.setattr(orchestrator.memory, "EVERY_S", 0.0)
    await orchestrator.complete("doc", Document(TEXT, "python"), CURSOR)
    await asyncio.sleep(0.2)  # the worker's idle work is done
    assert trims == [0]
    monkeypatch.setattr(orchestrator.memory, "EVERY_S", 3600.0)
    await orchestrator.complete("doc", Document(TEXT, "python"), CURSOR)
    await asyncio.sleep(0.2)
    assert trims == [0]  # not again within EVERY_S
