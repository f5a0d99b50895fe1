"""Fakes for the orchestrator's and the pipeline's tests: a backend that replays a text."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fim_lsp.backend import Generation, GenerationOptions
from fim_lsp.engine.loading import DEMO_MODEL
from fim_lsp.prompt import FimTokenizer

# The demo model's tokenizer ships in the package: these tests need nothing from ../shared.
DEMO_TOKENIZER = FimTokenizer.from_file(DEMO_MODEL / "tokenizer.json")


class FakeBackend:
    """Generates the tokens of a fixed text, one by one, as an engine would."""

    name = "local"

    def __init__(self, output: str, started: threading.Event | None = None, hold: float = 0.0):
        self.ids = DEMO_TOKENIZER.encode(output)
        self.prompts: list[list[int]] = []
        self.started = started or threading.Event()
        self.hold = hold  # seconds per token, so that a test can supersede a running job
        self.rate: float | None = None  # ms per prompt token; None: no cold budget
        self.warmed: list[list[int]] = []

    def prefill_ms_per_token(self) -> float | None:
        return self.rate

    def cached_tokens(self, prompt: list[int]) -> int:
        return max((shared(prompt, seen) for seen in self.prompts + self.warmed), default=0)

    def warm(self, prompt, options, cancel) -> None:
        self.warmed.append(prompt)

    def generate(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> Generation:
        self.prompts.append(prompt)
        self.started.set()
        generated: list[int] = []
        reason = "length"
        for token in self.ids[: options.max_new_tokens]:
            if cancel.wait(self.hold):
                reason = "cancelled"
                break
            generated.append(token)
            if should_stop(generated):
                reason = "stop"
                break
        return Generation(generated, len(prompt), 0, reason, {"prefill": 1.0, "decode": 1.0})


def shared(a: list[int], b: list[int]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[count] == b[count]:
        count += 1
    return count


class SetAfter(threading.Event):
    """Set once asked `count` times: a cancel that arrives in the middle of a chunk."""

    def __init__(self, count: int):
        super().__init__()
        self.left = count

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0 or super().is_set()
