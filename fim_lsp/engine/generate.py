"""Generation: prefill what the KV cache lacks, then one decode step per token, with stop checks.

The engine keeps the token ids it has already run through the model and their KV cache. An SPM
prompt (`<SUF> suffix <PRE> prefix <MID>`) only grows at its end while the user types at the
cursor, so a new prompt usually shares all but a few tokens with the last one: those are cropped
off the cache and only the new tokens are prefilled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from fim_lsp.engine.errors import EngineError
from fim_lsp.engine.precision import Precision

# Prefill runs in chunks so that a cancel is seen between them; what was prefilled stays cached.
PREFILL_CHUNK = 256


@dataclass
class Generation:
    ids: list[int]  # generated token ids, without the end-of-text token
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the cache
    stop_reason: str  # "end", "length", "stop", "cancelled"
    timings_ms: dict[str, float] = field(default_factory=dict)


class PromptCache:
    """The token ids that the model has seen, and their keys and values."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.kv = DynamicCache()

    def keep(self, prompt: list[int]) -> int:
        """Crop to the longest common prefix with `prompt`, leaving at least one token to run."""
        limit = min(len(self.ids), len(prompt) - 1)
        common = 0
        while common < limit and self.ids[common] == prompt[common]:
            common += 1
        if common < len(self.ids):
            self.kv.crop(common - len(self.ids))
            del self.ids[common:]
        return common

    def clear(self) -> None:
        self.ids = []
        self.kv = DynamicCache()


class Engine:
    """One loaded model and its cache. Not thread-safe: the scheduler's one worker owns it."""

    def __init__(self, model, precision: Precision, vocab_size: int, reuse_cache: bool = True):
        self.model = model
        self.precision = precision
        self.device = torch.device(precision.device)
        self.vocab_size = vocab_size  # logits past it are never sampled
        self.reuse_cache = reuse_cache
        self.cache = PromptCache()

    @torch.inference_mode()
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        end_id: int,
        temperature: float = 0.0,
        should_stop: Callable[[list[int]], bool] | None = None,
        cancel: threading.Event | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Generate up to `max_new_tokens` after `prompt`.

        Stops at `end_id`, when `should_stop(generated_ids)` says so, or when `cancel` is set
        (checked before every forward pass). A cancelled generation returns what it has.
        """
        started = time.perf_counter()
        cancel = cancel or threading.Event()
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        if not self.reuse_cache:
            self.cache.clear()
        try:
            cached = self.cache.keep(prompt)
            logits = self.prefill(prompt[cached:], cancel)
            prefilled_at = time.perf_counter()
            generated: list[int] = []
            stop_reason = "cancelled" if logits is None else "length"
            while logits is not None and len(generated) < max_new_tokens:
                token = self.sample(logits, temperature, generator)
                if token == end_id:
                    stop_reason = "end"
                    break
                generated.append(token)
                if should_stop is not None and should_stop(generated):
                    stop_reason = "stop"
                    break
                if len(generated) == max_new_tokens:
                    break
                if cancel.is_set():
                    stop_reason = "cancelled"
                    break
                logits = self.decode_step(token)
        except BaseException as error:
            self.cache.clear()  # a forward pass that broke off may have grown some layers only
            if isinstance(error, torch.OutOfMemoryError):
                raise EngineError(
                    f"out of memory while generating: lower contextLength, or use device cpu "
                    f"({error})"
                ) from error
            raise
        finished = time.perf_counter()
        prefill_end = prefilled_at if logits is not None else finished
        timings = {
            "prefill": (prefill_end - started) * 1000,
            "decode": (finished - prefill_end) * 1000,
            "total": (finished - started) * 1000,
        }
        return Generation(generated, len(prompt), cached, stop_reason, timings)

    def prefill(self, ids: list[int], cancel: threading.Event) -> torch.Tensor | None:
        """Run `ids` through the model after the cache; the last position's logits, or None if
        cancelled. Chunks already run stay in the cache."""
        logits = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            if cancel.is_set():
                return None
            logits = self.forward(ids[start : start + PREFILL_CHUNK])
        return logits

    def decode_step(self, token: int) -> torch.Tensor:
        return self.forward([token])

    def forward(self, ids: list[int]) -> torch.Tensor:
        # input_ids: [1, n]; logits: [vocab] for the last position only
        input_ids = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=input_ids, cache=self.cache.kv, use_cache=True, logits_to_keep=1)
        self.cache.ids.extend(ids)
        return out.logits[0, -1, : self.vocab_size].float()

    def sample(
        self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None
    ) -> int:
        if temperature <= 0:
            return int(torch.argmax(logits))
        probabilities = torch.softmax(logits / temperature, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=generator))
