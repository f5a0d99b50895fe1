"""The pipeline's completion step: decoding stops where the Finisher says, the suggestion is the
Finisher's, in the document's line endings. A scripted engine stands in for the model here; the
real engine runs the same path in test_cli.py and the end-to-end tests."""

from __future__ import annotations

import threading
from typing import Any

from fim_lsp.document import Cursor
from fim_lsp.engine import Generation
from fim_lsp.pipeline import Completer
from fim_lsp.prompt import FimTokenizer
from fim_lsp.settings import Settings


class ScriptedEngine:
    """Generates a fixed text's tokens one by one, asking `should_stop` after each, as the
    real engine's decode loop does."""

    context_length = 2048

    def __init__(self, tokenizer: FimTokenizer, text: str):
        self.ids = tokenizer.encode(text)
        self.reuse_cache = True
        self.draft_tokens = 0

    def generate(self, prompt: list[int], max_new_tokens: int, end_id: int, **options: Any):
        generated: list[int] = []
        stop_reason = "end"
        for token in self.ids[:max_new_tokens]:
            if options["cancel"] is not None and options["cancel"].is_set():
                stop_reason = "cancelled"
                break
            generated.append(token)
            if options["should_stop"](generated):
                stop_reason = "stop"
                break
        return Generation(generated, len(prompt), 0, stop_reason)


def complete(
    tokenizer: FimTokenizer, cursor: Cursor, raw: str, cancel: threading.Event | None = None
):
    engine: Any = ScriptedEngine(tokenizer, raw)
    return Completer(Settings(max_time_ms=0), tokenizer, engine).complete(cursor, cancel)


def test_decoding_stops_where_the_finisher_cuts(demo_tokenizer: FimTokenizer) -> None:
    suffix = "\n    return total\n\n\ndef main():\n    pass\n"
    cursor = Cursor("def f(xs):\n    total = 0\n    ", suffix, "python")
    raw = "for x in xs:\n        total += x\n    return total\n\n\nprint(f([1]))\nprint(2)\n"
    found = complete(demo_tokenizer, cursor, raw)
    assert found.stop_reason == "stop"
    assert found.generated_tokens < len(demo_tokenizer.encode(raw))
    assert found.text == "for x in xs:\n        total += x"


def test_the_suggestion_gets_the_documents_line_endings(demo_tokenizer: FimTokenizer) -> None:
    cursor = Cursor("def f(items):\r\n    count = 0\r\n    ", "\r\n    return count\r\n", "python")
    raw = "for item in items:\n        count += 1\n    return count\n"
    assert complete(demo_tokenizer, cursor, raw).text == "for item in items:\r\n        count += 1"


def test_a_closer_overlap_on_a_crlf_line_replaces_the_same_characters(
    demo_tokenizer: FimTokenizer,
) -> None:
    found = complete(demo_tokenizer, Cursor("foo(", ")\r\nx\r\n", "python"), "a)\n")
    assert (found.text, found.replace_chars) == ("a)", 1)


def test_a_cancelled_generation_suggests_nothing(demo_tokenizer: FimTokenizer) -> None:
    cancel = threading.Event()
    cancel.set()
    found = complete(demo_tokenizer, Cursor("x = ", "\n", "python"), "1\n", cancel)
    assert (found.text, found.stop_reason) == ("", "cancelled")
