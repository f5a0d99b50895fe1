"""What generates a completion's tokens: the interface the local engine and the team server share."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationOptions:
    """How one request generates."""

    max_new_tokens: int
    end_id: int  # <|endoftext|> (0): ends the middle
    temperature: float = 0.0
    draft_tokens: int = 8  # local engine only
    cache_reuse: bool = True  # local engine only
    seed: int | None = None


@dataclass
class Generation:
    ids: list[int]  # generated token ids, without the end-of-text token
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the cache
    stop_reason: str  # "end", "length", "stop", "cancelled"
    timings_ms: dict[str, float] = field(default_factory=dict)
    drafted: int = 0  # prompt-lookup draft tokens verified, and how many the model agreed with
    accepted: int = 0


class BackendUnavailable(Exception):
    """The backend cannot answer this request (the message says why and what to do); the
    fallback answers instead."""


class Backend(Protocol):
    name: str  # for the status: "team server", "local"

    def generate(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> Generation:
        """Tokens after `prompt` until `end_id`, `max_new_tokens`, `should_stop(all ids so far)`
        or `cancel` (set from any thread); runs in the server's worker thread."""
        ...
