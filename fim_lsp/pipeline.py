"""The stages of one completion in order: cursor -> gate -> prompt -> backend -> finish -> text."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fim_lsp import gate
from fim_lsp.availability import Availability
from fim_lsp.backend import Backend, GenerationOptions
from fim_lsp.documents import Cursor
from fim_lsp.gate import Mode
from fim_lsp.postprocess import Finisher
from fim_lsp.prompt import FimTokenizer, Prompt, build_prompt
from fim_lsp.routing import Routed
from fim_lsp.settings import DEVICE_CONTEXT, Settings

Progress = Callable[[str, int | None], None]  # (message, percentage)


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
    # Answered from a shorter prompt than the full context (why, for the log), and the full
    # prompt, to prefill in the background for the next keystrokes.
    context: str = ""
    warm_ids: list[int] | None = None


# A cold prompt is never cut below this many tokens, whatever the budget: fewer leave too little
# code around the cursor to be worth an answer.
MIN_COLD_TOKENS = 128


@dataclass
class Speculation:
    """The suggestion computed, while idle, for the document as it would be after the user
    accepts the one shown: answered at once when the next request's prompt is this one."""

    prompt_ids: list[int]
    mode: Mode
    settings: Settings
    completion: Completion


def context_tokens(settings: Settings) -> int:
    """contextLength, resolved for the device first (Settings.with_context_for)."""
    if settings.context_length is None:
        raise ValueError("contextLength is not resolved for a device: Settings.with_context_for")
    return settings.context_length


def new_tokens_allowed(settings: Settings) -> int:
    return min(settings.max_new_tokens, context_tokens(settings) // 2)


def plan(
    tokenizer: FimTokenizer, settings: Settings, cursor: Cursor, mode: Mode | None = None
) -> tuple[Mode | None, Prompt | None]:
    """The mode the gate chose at an LF cursor, and the prompt (no prompt: no completion)."""
    mode = mode or gate.decide(cursor, settings.multiline)
    if mode is None:
        return None, None
    budget = context_tokens(settings) - new_tokens_allowed(settings)
    prompt = build_prompt(tokenizer, cursor.prefix, cursor.suffix, budget, cursor.first_line)
    return mode, prompt


class Completer:
    """A tokenizer and a backend that generates, answering one cursor at a time."""

    def __init__(
        self,
        settings: Settings,
        tokenizer: FimTokenizer,
        backend: Backend,
        context_length: int,
        about: dict[str, str] | None = None,
    ):
        self.settings = settings  # the default for `complete`
        self.tokenizer = tokenizer
        self.backend = backend
        self.context_length = context_length  # tokens the model was trained on
        self.about = about or {}  # device, quantization, attention...: for status, logs, --json
        self.speculation: Speculation | None = None

    @classmethod
    def load(
        cls,
        settings: Settings,
        progress: Progress | None = None,
        tell: Callable[[str, str], None] | None = None,
    ) -> Completer:
        """The model that `settings` names, on the local engine or a team server; `tell` shows
        the user the team server's comings and goings (from any thread)."""
        if settings.backend == "local":
            return cls.load_local(settings, progress)
        return cls.load_team(settings, progress, tell or (lambda level, message: None))

    @classmethod
    def load_local(cls, settings: Settings, progress: Progress | None = None) -> Completer:
        """The model loaded in process (torch imported here)."""
        from fim_lsp.engine import load_engine, no_progress, resolve_model

        progress = progress or no_progress
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
        if settings.cold_budget_ms:  # measured at load (once per machine), not at a request
            progress(f"prefill: {engine.prefill_ms_per_token():.1f} ms per token", 100)
        return cls(settings, tokenizer, engine, engine.context_length, engine.about())

    @classmethod
    def load_team(
        cls, settings: Settings, progress: Progress | None, tell: Callable[[str, str], None]
    ) -> Completer:
        """The team server, with the fallback `settings` names; only the tokenizer is local."""
        from fim_lsp.engine import no_progress, resolve_model
        from fim_lsp.engine.loading import TRAINED_CONTEXT
        from fim_lsp.team import TeamBackend

        progress = progress or no_progress
        folder = resolve_model(settings.model, progress, tokenizer_only=True)
        tokenizer = FimTokenizer.from_file(folder / "tokenizer.json")
        team = TeamBackend(settings.backend, settings.api_key, settings.cache_salt)
        local = None if settings.fallback == "none" else lambda: cls.load_local(settings).backend
        availability = Availability(fallback=settings.fallback)
        routed = Routed(team, team.probe, availability, local, tell)
        asked = settings.context_length or DEVICE_CONTEXT["team server"]
        context = TRAINED_CONTEXT.get(settings.model, asked)
        about = {"backend": settings.backend, "device": "team server", "quantization": "server's"}
        return cls(settings, tokenizer, routed, context, about)

    def complete(
        self,
        cursor: Cursor,
        cancel: threading.Event | None = None,
        mode: Mode | None = None,
        settings: Settings | None = None,
    ) -> Completion:
        """The suggestion at `cursor` (greedy when temperature is 0)."""
        started = time.perf_counter()
        settings = self.effective(settings or self.settings)
        document = cursor.normalized()  # the model reads LF; the answer gets the file's endings
        mode, full = plan(self.tokenizer, settings, document, mode)
        if mode is None or full is None:
            return Completion("", stop_reason="gate")
        prompt, why = self.within_cold_budget(full, document, settings)
        if (ready := self.speculated(prompt.ids, mode, settings)) is not None:
            return dataclasses.replace(
                ready, stop_reason="speculated", timings_ms={"total": elapsed_ms(started)}
            )
        deadline = started + settings.max_time_ms / 1000 if settings.max_time_ms else None
        finisher = Finisher(self.tokenizer.decode, document, mode, deadline)
        options = GenerationOptions(
            max_new_tokens=new_tokens_allowed(settings),
            end_id=self.tokenizer.eot_id,
            temperature=settings.temperature,
            draft_tokens=settings.draft_tokens,
            cache_reuse=settings.cache_reuse,
            cache_memory_mb=settings.cache_memory_mb,
        )
        generation = self.backend.generate(
            prompt.ids, options, finisher.should_stop, cancel or threading.Event()
        )
        cancelled = generation.stop_reason == "cancelled"
        suggestion = None if cancelled else finisher.suggestion(generation.ids)
        text = suggestion.text.replace("\n", cursor.line_ending) if suggestion else ""
        return Completion(
            text,
            replace_chars=suggestion.replace_chars if suggestion else 0,
            raw=self.tokenizer.decode(generation.ids),
            mode=mode,
            prompt_ids=prompt.ids,
            generated_tokens=len(generation.ids),
            cached_tokens=generation.cached_tokens,
            drafted_tokens=generation.drafted,
            accepted_tokens=generation.accepted,
            stop_reason=generation.stop_reason,
            timings_ms={**generation.timings_ms, "total": elapsed_ms(started)},
            context=why,
            warm_ids=None if prompt is full else full.ids,
        )

    def effective(self, settings: Settings) -> Settings:
        """contextLength for the device that answers, and no longer than the model was trained
        on, whatever contextLength says."""
        return settings.with_context_for(self.about.get("device", "cpu"), self.context_length)

    def speculate(
        self, cursor: Cursor, shown: Completion, settings: Settings, cancel: threading.Event
    ) -> None:
        """Compute the suggestion that follows when the user accepts `shown` at `cursor` (its
        text inserted, the characters it replaces gone), for `complete` to answer at once."""
        accepted = Cursor(
            cursor.prefix + shown.text,
            cursor.suffix[shown.replace_chars :],
            cursor.language_id,
            cursor.first_line,
        )
        # Sized as the request after an accept will be (the cold budget too), so that it matches;
        # it runs while the worker is idle, and yields to any request.
        completion = self.complete(accepted, cancel, settings=settings)
        if completion.mode is not None and completion.stop_reason != "cancelled":
            self.speculation = Speculation(
                completion.prompt_ids, completion.mode, self.effective(settings), completion
            )

    def speculated(self, prompt: list[int], mode: Mode, settings: Settings) -> Completion | None:
        """The speculated suggestion, when it was made for this very prompt, mode and settings."""
        found, self.speculation = self.speculation, None  # used once, or stale
        if found and (found.prompt_ids, found.mode, found.settings) == (prompt, mode, settings):
            return found.completion
        return None

    def within_cold_budget(
        self, full: Prompt, cursor: Cursor, settings: Settings
    ) -> tuple[Prompt, str]:
        """The prompt to answer from: the full one, unless prefilling what the caches lack would
        take longer than `coldBudgetMs`; then the longest prompt that fits the budget, and why."""
        budget_ms = settings.cold_budget_ms
        rate = self.backend.prefill_ms_per_token() if budget_ms else None
        if rate is None:
            return full, ""
        new = len(full.ids) - self.backend.cached_tokens(full.ids)
        if new * rate <= budget_ms:
            return full, ""
        tokens = max(MIN_COLD_TOKENS, int(budget_ms / rate))
        if tokens >= len(full.ids):
            return full, ""
        smaller = build_prompt(
            self.tokenizer, cursor.prefix, cursor.suffix, tokens, cursor.first_line
        )
        why = (
            f"{len(smaller.ids)} of {len(full.ids)} prompt tokens: {new} not cached would take "
            f"{new * rate:,.0f} ms at {rate:.1f} ms each, past coldBudgetMs {budget_ms}; the "
            "full prompt is prefilled in the background"
        )
        return smaller, why

    def warm(self, ids: list[int], settings: Settings, cancel: threading.Event) -> None:
        """Prefill the full prompt `ids` in the background (see `within_cold_budget`)."""
        options = GenerationOptions(
            max_new_tokens=1, end_id=self.tokenizer.eot_id, cache_memory_mb=settings.cache_memory_mb
        )
        self.backend.warm(ids, options, cancel)


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
