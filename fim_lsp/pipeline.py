"""The stages in order: cursor -> gate -> prompt -> engine -> post-process -> suggestion."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

from fim_lsp import gate, postprocess
from fim_lsp.document import Cursor
from fim_lsp.engine import Engine, load_engine, resolve_model
from fim_lsp.engine.loading import Progress, no_progress
from fim_lsp.gate import Mode
from fim_lsp.prompt import FimTokenizer, Prompt, build_prompt
from fim_lsp.settings import Settings

# Past this size a document is most likely generated or binary; completing in it helps nobody.
MAX_DOCUMENT_CHARS = 8_000_000


@dataclass
class Completion:
    text: str  # to insert at the cursor, in the document's line endings ("" = nothing)
    replace_chars: int = 0  # characters right of the cursor that `text` replaces
    raw: str = ""  # the model's output before post-processing
    mode: Mode | None = None
    prompt_ids: list[int] = field(default_factory=list)
    generated_tokens: int = 0
    cached_tokens: int = 0
    drafted_tokens: int = 0  # prompt-lookup draft tokens checked, and how many were right
    accepted_tokens: int = 0
    stop_reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)


def unsuitable(text: str) -> str | None:
    """Why a document gets no completions at all, or None."""
    if len(text) > MAX_DOCUMENT_CHARS:
        return f"the document is over {MAX_DOCUMENT_CHARS:,} characters"
    if "\x00" in text:
        return "the document looks binary (it contains NUL characters)"
    return None


def new_tokens_allowed(settings: Settings) -> int:
    return min(settings.max_new_tokens, settings.context_length // 2)


def plan(
    tokenizer: FimTokenizer, settings: Settings, cursor: Cursor, mode: Mode | None = None
) -> tuple[Cursor, Mode | None, Prompt | None]:
    """The LF-normalised cursor, the mode the gate chose and the prompt (no prompt: no completion)."""
    document = cursor.normalized()  # the model reads LF; the answer gets the file's endings
    mode = mode or gate.decide(document, settings.multiline)
    if mode is None:
        return document, None, None
    budget = settings.context_length - new_tokens_allowed(settings)
    return document, mode, build_prompt(tokenizer, document.prefix, document.suffix, budget)


class Completer:
    """A tokenizer and a loaded engine, answering one cursor at a time."""

    def __init__(self, settings: Settings, tokenizer: FimTokenizer, engine: Engine):
        self.settings = settings
        self.tokenizer = tokenizer
        self.engine = engine

    @classmethod
    def load(cls, settings: Settings, progress: Progress = no_progress) -> Completer:
        folder = resolve_model(settings.model, progress)
        tokenizer = FimTokenizer.from_file(folder / "tokenizer.json")
        engine = load_engine(
            settings.model,
            tokenizer.vocab_size,
            device=settings.device,
            quantization=settings.quantization,
            progress=progress,
            folder=folder,  # resolved once: for a hub id, each resolve asks the hub
        )
        return cls(settings, tokenizer, engine)

    def complete(
        self, cursor: Cursor, cancel: threading.Event | None = None, mode: Mode | None = None
    ) -> Completion:
        """The suggestion at `cursor` under the current settings (greedy when temperature is 0)."""
        started = time.perf_counter()
        # No longer prompts than the model was trained on, whatever contextLength says.
        context = min(self.settings.context_length, self.engine.context_length)
        settings = dataclasses.replace(self.settings, context_length=context)
        document, mode, prompt = plan(self.tokenizer, settings, cursor, mode)
        if mode is None or prompt is None:
            return Completion("", stop_reason="gate")
        max_new_tokens = new_tokens_allowed(settings)
        deadline = started + settings.max_time_ms / 1000 if settings.max_time_ms else None
        finisher = postprocess.Finisher(self.tokenizer.decode, document, mode, deadline)
        self.engine.reuse_cache = settings.cache_reuse
        self.engine.draft_tokens = settings.draft_tokens
        generation = self.engine.generate(
            prompt.ids,
            max_new_tokens,
            self.tokenizer.eot_id,
            temperature=settings.temperature,
            should_stop=finisher.should_stop,
            cancel=cancel,
        )
        raw = self.tokenizer.decode(generation.ids)
        cleaned = (
            None if generation.stop_reason == "cancelled" else finisher.suggestion(generation.ids)
        )
        text = cleaned.text.replace("\n", cursor.line_ending) if cleaned else ""
        timings = {**generation.timings_ms, "total": (time.perf_counter() - started) * 1000}
        return Completion(
            text,
            replace_chars=cleaned.replace_chars if cleaned else 0,
            raw=raw,
            mode=mode,
            prompt_ids=prompt.ids,
            generated_tokens=len(generation.ids),
            cached_tokens=generation.cached_tokens,
            drafted_tokens=generation.drafted,
            accepted_tokens=generation.accepted,
            stop_reason=generation.stop_reason,
            timings_ms=timings,
        )


class ShownSuggestions:
    """The last suggestion answered per document, so that typing it out costs no model run."""

    def __init__(self) -> None:
        self.shown: dict[str, tuple[Cursor, Completion]] = {}

    def remember(self, key: str, cursor: Cursor, completion: Completion) -> None:
        self.shown[key] = (cursor, completion)

    def forget(self, key: str) -> None:
        self.shown.pop(key, None)

    def follow(self, key: str, cursor: Cursor) -> Completion | None:
        """The rest of the shown suggestion when the user has typed its start, else None."""
        if key not in self.shown:
            return None
        shown_at, completion = self.shown[key]
        if cursor.suffix != shown_at.suffix or not cursor.prefix.startswith(shown_at.prefix):
            return None
        typed = cursor.prefix[len(shown_at.prefix) :]
        if not typed or len(typed) >= len(completion.text) or not completion.text.startswith(typed):
            return None
        return dataclasses.replace(
            completion,
            text=completion.text[len(typed) :],
            generated_tokens=0,
            stop_reason="typed-through",
            timings_ms={},
        )
