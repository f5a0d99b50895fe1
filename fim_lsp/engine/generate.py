"""Generation: prefill what the KV cache lacks, then one decode step per token, with stop checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fim_lsp.engine.attention import choose_attention
from fim_lsp.engine.cpu_step import CpuStep
from fim_lsp.engine.errors import EngineError
from fim_lsp.engine.kv_cache import PromptCache
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
    drafted: int = 0  # prompt-lookup draft tokens verified, and how many the model agreed with
    accepted: int = 0


class Engine:
    """One loaded model and its cache. Not thread-safe: the scheduler's one worker owns it."""

    def __init__(
        self,
        model,
        precision: Precision,
        vocab_size: int,
        reuse_cache: bool = True,
        draft_tokens: int = 8,
    ):
        self.attention = choose_attention(precision)
        model.set_attn_implementation(self.attention.implementation)
        self.model = model
        self.precision = precision
        self.device = torch.device(precision.device)
        self.vocab_size = vocab_size  # logits past it are never sampled
        self.context_length = model.config.max_position_embeddings  # tokens it was trained on
        self.reuse_cache = reuse_cache
        self.draft_tokens = draft_tokens  # longest prompt-lookup draft; 0 turns drafting off
        # Draft length now: +2 after a fully accepted draft, -1 after a miss (transformers'
        # "heuristic" schedule), so that drafts the model keeps rejecting stay short and cheap.
        self.draft_length = max(1, draft_tokens)  # drafting turned on later starts from here
        self.cache = PromptCache(self.attention.cache)
        # New tokens (prefill chunks, decode steps, drafts, keystrokes) skip transformers'
        # modules where the C kernels run the whole layer.
        self.step_problem = CpuStep.problem(model, precision, self.attention)
        self.step = None if self.step_problem else CpuStep(model)
        self.drafted = self.accepted = 0  # running totals

    @property
    def steps(self) -> str:
        """What runs the model's forward passes, for the log."""
        if self.step_problem:
            return f"transformers' modules ({self.step_problem})"
        return "C step (one C call per layer)"

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
        generated: list[int] = []
        drafted, accepted = self.drafted, self.accepted
        try:
            cached = self.cache.keep(prompt)
            logits = self.prefill(prompt[cached:], cancel)
            # Sampling waits for a GPU's queued work: prefill's time ends with its first token.
            first = None if logits is None else self.sample(logits[-1], temperature, generator)
            prefilled_at = time.perf_counter()
            if first is None:
                stop_reason = "cancelled"
            else:
                stop_reason = self.decode(
                    prompt, generated, first,
                    max_new_tokens, end_id, temperature, generator, should_stop, cancel,
                )  # fmt: skip
        except BaseException as error:
            self.cache.clear()  # a forward pass that broke off may have grown some layers only
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
        max_new_tokens: int,
        end_id: int,
        temperature: float,
        generator: torch.Generator | None,
        should_stop: Callable[[list[int]], bool] | None,
        cancel: threading.Event,
    ) -> str:
        """Append tokens to `generated` until a stop; returns the stop reason."""
        # Tokens decided but not yet returned; all but the last are already in the cache.
        decided = [first]
        while True:
            token = decided.pop(0)
            if token == end_id:
                return "end"
            generated.append(token)
            if should_stop is not None and should_stop(generated):
                return "stop"
            if len(generated) >= max_new_tokens:
                return "length"
            if decided:
                continue
            if cancel.is_set():
                return "cancelled"
            room = max_new_tokens - len(generated) - 1
            draft = self.draft(prompt + generated, room) if temperature <= 0 else []
            if draft:
                decided = self.verify(token, draft)
            else:
                decided = [self.sample(self.forward([token])[-1], temperature, generator)]

    def draft(self, ids: list[int], limit: int) -> list[int]:
        """Prompt-lookup drafting: the tokens that followed the last earlier occurrence of the
        sequence's final n-gram (code repeats its own names and lines a lot)."""
        limit = min(limit, self.draft_length, self.draft_tokens)
        if limit <= 0:
            return []
        for n in (3, 2):
            tail = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start : start + n] == tail:
                    return ids[start + n : start + n + limit]
        return []

    def verify(self, token: int, draft: list[int]) -> list[int]:
        """Run `token` and the draft in one forward pass; keep the draft's longest prefix that
        greedy decoding would have produced, plus the model's own next token (exactly greedy)."""
        predicted = torch.argmax(
            self.forward([token, *draft], keep=len(draft) + 1), dim=-1
        ).tolist()
        accepted = 0
        while accepted < len(draft) and predicted[accepted] == draft[accepted]:
            accepted += 1
        self.cache.drop(len(draft) - accepted)
        missed = accepted < len(draft)
        longer = min(self.draft_tokens, self.draft_length + 2)
        self.draft_length = max(1, self.draft_length - 1) if missed else longer
        self.drafted += len(draft)
        self.accepted += accepted
        return [*draft[:accepted], predicted[accepted]]

    def prefill(self, ids: list[int], cancel: threading.Event) -> torch.Tensor | None:
        """Run `ids` through the model after the cache; the last position's logits, or None if
        cancelled. Chunks already run stay in the cache."""
        logits = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            if cancel.is_set():
                return None
            logits = self.forward(ids[start : start + PREFILL_CHUNK])
        return logits

    def forward(self, ids: list[int], keep: int = 1) -> torch.Tensor:
        # ids -> logits: [keep, vocab] for the last `keep` positions
        if self.step:
            logits = self.step(self.cache.kv, ids, keep)
        else:
            input_ids = torch.tensor([ids], device=self.device)
            out = self.model(
                input_ids=input_ids, cache=self.cache.kv, use_cache=True, logits_to_keep=keep
            )
            logits = out.logits[0]
        self.cache.ids.extend(ids)
        return logits[:, : self.vocab_size].float()

    def sample(
        self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None
    ) -> int:
        # logits: [vocab]
        if temperature <= 0:
            return int(torch.argmax(logits))
        probabilities = torch.softmax(logits / temperature, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=generator))
