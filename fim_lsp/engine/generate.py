"""Generation: prefill what the KV cache lacks, then one decode step per token, with stop checks.

The engine is the local Backend (backend.py): a model, its precision and its cache. Per-request
choices (tokens, temperature, drafts, cache reuse) come in as GenerationOptions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from fim_lsp.backend import Generation, GenerationOptions, take
from fim_lsp.engine.choices import Precision, machine_key, remembered
from fim_lsp.engine.cpu_step import CpuStep
from fim_lsp.engine.kv_cache import KVCache, PromptStore
from fim_lsp.engine.neox import Cancelled, NeoX
from fim_lsp.errors import EngineError

# Prefill runs in chunks (a cancel is seen between their layers); the chunks run stay cached.
PREFILL_CHUNK = 256
# Prefill in the background (warm) runs whole chunks, so that it gets on between keystrokes, and
# small ones, so that a request waits for at most one (about 0.1 s on 2 cores; with chunks of 32
# the warm keystroke's p50 grew by 30 ms in bench/editing_session.py).
WARM_CHUNK = 16
# The prefill rate is measured on this many tokens when it is not known yet, then follows the
# prefills that run (each of at least this many tokens moves it by RATE_WEIGHT): fewer than the
# shortest cold prompt (pipeline.MIN_COLD_TOKENS), so that a cold answer corrects the rate too.
RATE_TOKENS = 64
RATE_WEIGHT = 0.3


class Engine:
    """One loaded model and its cache. Not thread-safe: the scheduler's one worker owns it."""

    name = "local"

    def __init__(self, model: NeoX, precision: Precision, vocab_size: int):
        self.model = model
        self.precision = precision
        self.device = torch.device(precision.device)
        self.vocab_size = vocab_size  # logits past it are never sampled
        self.context_length = model.shape.positions  # tokens it was trained on
        self.store = PromptStore(self.new_cache)  # the caches of recent prompts
        self.cache = self.new_cache()  # the one in use
        # A few new tokens after cached ones (decode steps, drafts, keystrokes) skip torch's
        # modules where the C kernels run the whole layer.
        self.step_problem = CpuStep.problem(model, precision)
        self.step = None if self.step_problem else CpuStep(model)
        # Draft length now: +2 after a fully accepted draft, -1 after a miss (transformers'
        # "heuristic" schedule), so that drafts the model keeps rejecting stay short and cheap.
        self.draft_length = 8
        self.drafted = self.accepted = 0  # running totals
        self.prefill_rate: float | None = None  # ms per prompt token, from prefills that ran
        self.rate_seen = False  # whether prefill_rate comes from this process's own prefills

    def new_cache(self) -> KVCache:
        shape = self.model.shape
        return KVCache(
            shape.layers, shape.heads, shape.head_dim, self.precision.cache_dtype, self.device
        )

    @property
    def steps(self) -> str:
        """What runs the model's forward passes, for the log."""
        if self.step_problem:
            return f"torch modules ({self.step_problem})"
        return "C step (one C call per layer)"

    def about(self) -> dict[str, str]:
        """What runs the model, for the status, the log and `fim-lsp complete --json`."""
        return {
            "device": self.precision.device,
            "quantization": self.precision.quantization,
            "attention": self.precision.attention if self.step else "torch sdpa",
            "decode_steps": self.steps,
        }

    @torch.inference_mode()
    def generate(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool] = lambda ids: False,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Generate after `prompt` (the Backend interface).

        Stops at the end token, after `options.max_new_tokens`, when `should_stop(generated_ids)`
        says so, or when `cancel` is set (checked before every forward pass). A cancelled
        generation returns what it has.
        """
        started = time.perf_counter()
        cancel = cancel or threading.Event()
        seed = options.seed
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        if not options.cache_reuse:
            self.store.clear()
        generated: list[int] = []
        drafted, accepted = self.drafted, self.accepted
        try:
            self.cache, cached = self.store.take(prompt, options.cache_memory_mb << 20)
            logits = self.prefill(prompt[cached:], cancel)
            # Sampling waits for a GPU's queued work: prefill's time ends with its first token.
            first = None if logits is None else sample(logits[-1], options.temperature, generator)
            prefilled_at = time.perf_counter()
            if first is None:
                stop_reason = "cancelled"
            else:
                stop_reason = self.decode(
                    prompt, generated, first, options, generator, should_stop, cancel
                )
        except BaseException as error:
            self.cache.clear()  # a forward pass that broke off may have written some layers only
            if isinstance(error, torch.OutOfMemoryError):
                raise EngineError(
                    f"out of memory while generating: lower contextLength, or use device cpu "
                    f"({error})"
                ) from error
            raise
        finished = time.perf_counter()
        prefill_end = prefilled_at if first is not None else finished
        timings = {
            "prefill": (prefill_end - started) * 1000,
            "decode": (finished - prefill_end) * 1000,
            "total": (finished - started) * 1000,
        }
        return Generation(
            generated, len(prompt), cached, stop_reason, timings,
            drafted=self.drafted - drafted, accepted=self.accepted - accepted,
        )  # fmt: skip

    def decode(
        self,
        prompt: list[int],
        generated: list[int],
        first: int,
        options: GenerationOptions,
        generator: torch.Generator | None,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> str:
        """Append tokens to `generated` until a stop; returns the stop reason."""
        # Tokens decided but not yet returned; all but the last are already in the cache.
        decided = [first]
        while True:
            token = decided.pop(0)
            if (reason := take(token, generated, options, should_stop)) is not None:
                return reason
            if decided:
                continue
            if cancel.is_set():
                return "cancelled"
            room = options.max_new_tokens - len(generated) - 1
            limit = min(room, self.draft_length, options.draft_tokens)
            greedy = options.temperature <= 0
            draft = self.draft(prompt + generated, limit) if greedy else []
            if draft:
                decided = self.verify(token, draft, options.draft_tokens)
            else:
                logits = self.forward([token])[-1]
                decided = [sample(logits, options.temperature, generator)]

    @staticmethod
    def draft(ids: list[int], limit: int) -> list[int]:
        """Prompt-lookup drafting: the tokens that followed the last earlier occurrence of the
        sequence's final n-gram (code repeats its own names and lines a lot)."""
        if limit <= 0:
            return []
        for n in (3, 2):
            tail = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start : start + n] == tail:
                    return ids[start + n : start + n + limit]
        return []

    def verify(self, token: int, draft: list[int], longest: int) -> list[int]:
        """Run `token` and the draft in one forward pass; keep the draft's longest prefix that
        greedy decoding would have produced, plus the model's own next token (exactly greedy)."""
        predicted = torch.argmax(self.forward([token, *draft], keep=len(draft) + 1), dim=-1)
        predicted_ids = predicted.tolist()
        accepted = 0
        while accepted < len(draft) and predicted_ids[accepted] == draft[accepted]:
            accepted += 1
        self.cache.drop(len(draft) - accepted)
        missed = accepted < len(draft)
        longer = min(longest, self.draft_length + 2)
        self.draft_length = max(1, self.draft_length - 1) if missed else longer
        self.drafted += len(draft)
        self.accepted += accepted
        return [*draft[:accepted], predicted_ids[accepted]]

    def prefill(
        self,
        ids: list[int],
        cancel: threading.Event,
        chunk: int = PREFILL_CHUNK,
        background: bool = False,
    ) -> torch.Tensor | None:
        """Run `ids` through the model after the cache; the last position's logits, or None if
        cancelled. Chunks already run stay cached. A `background` prefill stops between chunks
        only (so that it gets on between keystrokes) and is not timed: its small chunks are
        slower per token than a request's, whose speed the cold budget needs."""
        logits = None
        started = time.perf_counter()
        done, done_at = 0, started
        try:
            for start in range(0, len(ids), chunk):
                if cancel.is_set():
                    return None
                part = ids[start : start + chunk]
                logits = self.forward(part, cancel=None if background else cancel)
                done, done_at = done + len(part), time.perf_counter()
        except Cancelled:
            return None
        finally:
            if done >= RATE_TOKENS and not background:
                self.observe_rate((done_at - started) * 1000 / done)
        return logits

    def observe_rate(self, rate: float) -> None:
        """Follow the prefill speed of this process's prefills; the first replaces the rate
        remembered from an earlier start (the machine may have been busier or quieter then),
        and is remembered for the next one."""
        if self.rate_seen and self.prefill_rate is not None:
            self.prefill_rate += RATE_WEIGHT * (rate - self.prefill_rate)
            return
        self.prefill_rate, self.rate_seen = rate, True
        remembered(self.rate_key(), lambda: rate, again=True)

    # ---- for a bounded first answer after a move (pipeline.py) ---------------------------------

    def prefill_ms_per_token(self) -> float:
        """What prefilling a prompt token costs here: from the prefills that ran, else measured
        once on this machine (and remembered, so that a restart does not measure again)."""
        if self.prefill_rate is None:
            self.prefill_rate = remembered(self.rate_key(), self.measure_prefill)
        return self.prefill_rate

    def rate_key(self) -> str:
        what = [self.precision.quantization, repr(self.model.shape), "prefill ms per token"]
        return machine_key(self.precision.device, what)

    @torch.inference_mode()
    def measure_prefill(self) -> float:
        scratch, self.cache = self.cache, self.new_cache()
        try:
            self.prefill(list(range(2, 2 + RATE_TOKENS)), threading.Event())
        finally:
            self.cache = scratch
        assert self.prefill_rate is not None
        return self.prefill_rate

    def cached_tokens(self, prompt: list[int]) -> int:
        """How many of `prompt`'s first tokens some cache already holds."""
        return self.store.cached(prompt)

    @torch.inference_mode()
    def warm(self, prompt: list[int], options: GenerationOptions, cancel: threading.Event) -> None:
        """Prefill `prompt` into the store for the requests to come, in small chunks that
        stop as soon as `cancel` is set (what was run stays)."""
        self.cache, cached = self.store.take(prompt, options.cache_memory_mb << 20)
        try:
            self.prefill(prompt[cached:], cancel, WARM_CHUNK, background=True)
        except BaseException:
            self.cache.clear()
            raise

    def forward(
        self, ids: list[int], keep: int = 1, cancel: threading.Event | None = None
    ) -> torch.Tensor:
        # ids -> logits: [keep, vocab] for the last `keep` positions
        if self.step:
            logits = self.step(self.cache, ids, keep, cancel)
        else:
            logits = self.model(ids, self.cache, keep, cancel)
        self.cache.ids.extend(ids)
        return logits[:, : self.vocab_size].float()


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    # logits: [vocab]
    if temperature <= 0:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))
