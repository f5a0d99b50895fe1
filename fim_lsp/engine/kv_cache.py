"""The engine's memory of the tokens it has run: their ids, and their keys and values per layer.

An SPM prompt (`<SUF> suffix <PRE> prefix <MID>`) only grows at its end while the user types at
the cursor, so a new prompt usually shares all but a few tokens with the last one: those are
dropped and only the new tokens are run.

Each layer's keys and values sit in one buffer [heads, capacity, head_dim] with room to spare,
grown by a quarter when full: a new token is written in place (a cache grown by concatenation
copies itself on every step), and each head's tokens are contiguous rows, as the C kernels read
them. On a CPU the buffers are on huge pages (memory.py): a decode step streams all of them.

A user also moves: to another line, another file, back again. A move changes an SPM prompt from
its first tokens (the suffix comes first), so the store keeps the caches of several recent
prompts, least recently used first out, within a memory budget: going back to a spot is warm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fim_lsp.engine import memory

MIN_CAPACITY = 256  # tokens: the first allocation, and the least room added when one grows
# A new prompt continues a cached one when it shares all but this part of the cached prompt
# (what was generated after it does not count): typing, backspace, an edit near the cursor.
# Otherwise the cached prompt is a place of its own, kept for a return, and the new one gets a
# cache of its own, starting from a copy of what they share.
CONTINUE_SHARE = 7 / 8


class KVCache:
    def __init__(
        self, layers: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ):
        self.ids: list[int] = []  # the tokens whose keys and values are held, in order
        self.prompt_length = 0  # of the last prompt run in it (the tokens after were generated)
        self.shape = (heads, 0, head_dim)
        self.dtype, self.device = dtype, device
        self.keys = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    @property
    def nbytes(self) -> int:
        """The memory its buffers take."""
        return 2 * sum(buffer.nbytes for buffer in self.keys)

    def reserve(self, count: int) -> None:
        """Room for `count` tokens after the ones held (the buffers may move)."""
        end = self.length + count
        if end > self.capacity:
            capacity = end + max(MIN_CAPACITY, end // 4)
            self.keys = [self.grown(buffer, capacity) for buffer in self.keys]
            self.values = [self.grown(buffer, capacity) for buffer in self.values]

    def grown(self, buffer: torch.Tensor, capacity: int) -> torch.Tensor:
        heads, _, dim = buffer.shape
        if self.device.type == "cpu":
            bigger = memory.empty((heads, capacity, dim), self.dtype)
        else:
            bigger = torch.empty((heads, capacity, dim), dtype=self.dtype, device=self.device)
        bigger[:, : self.length] = buffer[:, : self.length]
        return bigger

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values [heads, n, head_dim] of `layer` after the held
        ones (room reserved first); returns all of the layer's [heads, length + n, head_dim]."""
        start, end = self.length, self.length + keys.shape[1]
        assert end <= self.capacity, "reserve room before writing"
        self.keys[layer][:, start:end] = keys  # converted to the cache's dtype
        self.values[layer][:, start:end] = values
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def shared(self, prompt: list[int]) -> int:
        """How many of `prompt`'s first tokens this cache holds, leaving at least one to run."""
        limit = min(self.length, len(prompt) - 1)
        common = 0
        while common < limit and self.ids[common] == prompt[common]:
            common += 1
        return common

    def keep(self, prompt: list[int]) -> int:
        """Drop what `prompt` does not share from its start, keeping at least one token of the
        prompt to run; returns how many tokens are kept."""
        common = self.shared(prompt)
        self.drop(self.length - common)
        return common

    def copy_from(self, other: KVCache, count: int) -> None:
        """Hold the first `count` tokens of `other` (this cache being empty)."""
        self.reserve(count)
        for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
            for layer, buffer in enumerate(theirs):
                mine[layer][:, :count] = buffer[:, :count]
        self.ids = other.ids[:count]

    def drop(self, count: int) -> None:
        """Forget the last `count` tokens (their rows are written over later)."""
        if count > 0:
            del self.ids[-count:]

    def clear(self) -> None:
        self.ids.clear()


class PromptStore:
    """The KV caches of recent prompts, most recently used first, within a memory budget."""

    def __init__(self, new_cache: Callable[[], KVCache]):
        self.new_cache = new_cache
        self.caches: list[KVCache] = []

    def cached(self, prompt: list[int]) -> int:
        """How many of `prompt`'s first tokens some cache holds."""
        return max((cache.shared(prompt) for cache in self.caches), default=0)

    def take(self, prompt: list[int], budget_bytes: int) -> tuple[KVCache, int]:
        """The cache to run `prompt` in, holding its first tokens as far as any cache has them,
        and how many that is. Caches past the budget go, least recently used first."""
        common, best = max(
            ((cache.shared(prompt), cache) for cache in self.caches),
            key=lambda found: found[0],
            default=(0, None),
        )
        if best is not None and common >= CONTINUE_SHARE * best.prompt_length:
            best.drop(best.length - common)  # the prompt goes on from here
            self.caches.remove(best)
            cache = best
        else:
            cache = self.new_cache()
            if best is not None and common:
                cache.copy_from(best, common)
        cache.prompt_length = len(prompt)
        cache.reserve(len(prompt) - cache.length)  # its size now, for the budget
        self.caches.insert(0, cache)
        self.evict(budget_bytes)
        return cache, common

    def evict(self, budget_bytes: int) -> None:
        """Drop the least recently used caches until the rest fit (the newest always stays)."""
        while len(self.caches) > 1 and sum(cache.nbytes for cache in self.caches) > budget_bytes:
            self.caches.pop()

    def clear(self) -> None:
        self.caches.clear()
