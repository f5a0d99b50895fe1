"""The stages of one completion with a fake backend: the gate, the prompt, the cold budget, the
speculation after an accept, line endings."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from fim_lsp.documents import Cursor
from fim_lsp.gate import Mode
from fim_lsp.pipeline import MIN_COLD_TOKENS, Completer, new_tokens_allowed, plan
from fim_lsp.prompt import build_prompt
from fim_lsp.settings import Settings
from tests.fakes import DEMO_TOKENIZER, FakeBackend

SETTINGS = Settings(model="fake", max_time_ms=0, context_length=2048)
CURSOR = Cursor("def total(xs):\n    result = 0\n    ", "\n    return result\n", "python")


def completer(output: str = "for x in xs:\n        result += x\n") -> Completer:
    return Completer(SETTINGS, DEMO_TOKENIZER, FakeBackend(output), 2048)


def test_plan_is_the_gate_then_the_prompt_within_the_budget():
    mode, prompt = plan(DEMO_TOKENIZER, SETTINGS, CURSOR)
    budget = SETTINGS.context_length - new_tokens_allowed(SETTINGS)
    assert mode is Mode.MULTI_LINE
    assert prompt == build_prompt(DEMO_TOKENIZER, CURSOR.prefix, CURSOR.suffix, budget)
    assert plan(DEMO_TOKENIZER, SETTINGS, Cursor("x = pri", "nt(1)", "python")) == (None, None)


def test_the_model_reads_lf_and_the_answer_gets_the_documents_line_endings():
    pipeline = completer()
    crlf = Cursor(
        CURSOR.prefix.replace("\n", "\r\n"), CURSOR.suffix.replace("\n", "\r\n"), "python"
    )
    completion = pipeline.complete(crlf)
    assert completion.text == "for x in xs:\r\n        result += x"
    assert "\r" not in DEMO_TOKENIZER.decode(pipeline.backend.prompts[0])


def test_a_context_past_the_models_own_is_cut_to_it():
    pipeline = completer()
    assert pipeline.effective(Settings(context_length=8192)).context_length == 2048


def test_an_unset_context_is_the_answering_devices():
    on = {"cpu": 1024, "cuda": 2048, "team server": 2048}
    for device, tokens in on.items():
        pipeline = Completer(SETTINGS, DEMO_TOKENIZER, FakeBackend("x"), 2048, {"device": device})
        assert pipeline.effective(Settings()).context_length == tokens
    with pytest.raises(ValueError, match="not resolved"):
        plan(DEMO_TOKENIZER, Settings(), CURSOR)  # the budget needs a device's context


def test_the_cold_budget_picks_the_longest_prompt_that_fits():
    pipeline = completer()
    backend = pipeline.backend
    long_prefix = "".join(f"x{n} = {n}\n" for n in range(400)) + "def main():\n    "
    cursor = Cursor(long_prefix, "\n", "python")
    _, full = plan(DEMO_TOKENIZER, SETTINGS, cursor)
    assert full is not None
    backend.rate = 1000 / 300  # ms per token: 300 tokens fit the default budget
    prompt, why = pipeline.within_cold_budget(full, cursor, SETTINGS)
    assert MIN_COLD_TOKENS <= len(prompt.ids) <= 300 < len(full.ids)
    assert prompt.ids[-1] == DEMO_TOKENIZER.mid_id and "coldBudgetMs 1000" in why
    backend.prompts.append(full.ids)  # now cached: the full prompt again
    assert pipeline.within_cold_budget(full, cursor, SETTINGS) == (full, "")
    off = dataclasses.replace(SETTINGS, cold_budget_ms=0)
    backend.prompts.clear()
    assert pipeline.within_cold_budget(full, cursor, off) == (full, "")


def test_the_speculation_answers_only_its_own_prompt_and_settings_once():
    pipeline = completer()
    shown = pipeline.complete(CURSOR)
    pipeline.speculate(CURSOR, shown, SETTINGS, threading.Event())
    assert pipeline.speculation is not None
    accepted = Cursor(CURSOR.prefix + shown.text, CURSOR.suffix, "python")
    other = dataclasses.replace(SETTINGS, max_new_tokens=5)
    assert pipeline.complete(accepted, settings=other).stop_reason != "speculated"
    pipeline.speculate(CURSOR, shown, SETTINGS, threading.Event())
    runs = len(pipeline.backend.prompts)
    assert pipeline.complete(accepted).stop_reason == "speculated"
    assert len(pipeline.backend.prompts) == runs
    assert pipeline.complete(accepted).stop_reason != "speculated"  # used once


def test_decoding_stops_where_the_finisher_cuts():
    suffix = "\n    return total\n\n\ndef main():\n    pass\n"
    cursor = Cursor("def f(xs):\n    total = 0\n    ", suffix, "python")
    raw = "for x in xs:\n        total += x\n    return total\n\n\nprint(f([1]))\nprint(2)\n"
    found = completer(raw).complete(cursor)
    assert found.stop_reason == "stop"
    assert found.generated_tokens < len(DEMO_TOKENIZER.encode(raw))
    assert found.text == "for x in xs:\n        total += x"


def test_a_closer_overlap_on_a_crlf_line_replaces_the_same_characters():
    found = completer("a)\n").complete(Cursor("foo(", ")\r\nx\r\n", "python"))
    assert (found.text, found.replace_chars) == ("a)", 1)


def test_a_cancelled_generation_suggests_nothing():
    cancel = threading.Event()
    cancel.set()
    found = completer("1\n").complete(Cursor("x = ", "\n", "python"), cancel)
    assert (found.text, found.stop_reason) == ("", "cancelled")
