"""What generates tokens for a prompt: the interface shared by the local engine and a team server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate, for one request."""

    max_new_tokens: int
    end_id: int  # <|endoftext|>: ends the middle, and is not returned
    temperature: float = 0.0  # 0 = greedy
    draft_tokens: int = 8  # prompt-lookup drafts of at most this many tokens (greedy only); 0 = off
    cache_reuse: bool = True  # keep the KV cache of earlier prompts (off: to measure its effect)
    cache_memory_mb: int = 1024  # for the KV caches of recent prompts (local engine)
    seed: int | None = None  # for sampling at temperature > 0


@dataclass
class Generation:
    ids: list[int]  # generated token ids, without the end token
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose keys and values were already computed
    stop_reason: str  # "end", "length", "stop", "cancelled"
    timings_ms: dict[str, float] = field(default_factory=dict)
    drafted: int = 0  # draft tokens checked, and how many of them the model agreed with
    accepted: int = 0


class BackendUnavailable(Exception):
    """The backend cannot answer now (a server down, slow, refusing): the fallback answers."""


class Backend(Protocol):
    @property
    def name(self) -> str:
        """What the status calls it: "local", "team server", "local (server down)"."""
        ...

    def generate(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> Generation:
        """Generate after `prompt` until the end token, `options.max_new_tokens`, `should_stop`
        (asked after every token with all generated ids so far) or `cancel` (checked before every
        forward pass; a cancelled generation returns what it has)."""
        ...

    def prefill_ms_per_token(self) -> float | None:
        """What prefilling one prompt token costs, or None where it is unknown or small enough
        not to matter (then every prompt is answered at full length)."""
        ...

    def cached_tokens(self, prompt: list[int]) -> int:
        """How many of `prompt`'s first tokens are already computed (0 where unknown)."""
        ...

    def warm(self, prompt: list[int], options: GenerationOptions, cancel: threading.Event) -> None:
        """Prefill `prompt` for the requests to come, stopping as soon as `cancel` is set (a
        backend that cannot, or need not, does nothing)."""
        ...


class AtFullLength:
    """For a backend that answers every prompt at full length and warms nothing ahead: a server
    whose GPU prefills a prompt in milliseconds and keeps its own prefix cache."""

    def prefill_ms_per_token(self) -> float | None:
        return None

    def cached_tokens(self, prompt: list[int]) -> int:
        return 0

    def warm(self, prompt: list[int], options: GenerationOptions, cancel: threading.Event) -> None:
        return None


def take(
    token: int, ids: list[int], options: GenerationOptions, should_stop: Callable[[list[int]], bool]
) -> str | None:
    """Add a generated token to `ids`; the stop reason when the generation ends with it."""
    if token == options.end_id:
        return "end"
    ids.append(token)
    if should_stop(ids):
        return "stop"
    if len(ids) >= options.max_new_tokens:
        return "length"
    return None
