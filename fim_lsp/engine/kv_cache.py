"""The engine's memory of the tokens it has run: their ids and their keys and values.

An SPM prompt (`<SUF> suffix <PRE> prefix <MID>`) only grows at its end while the user types at
the cursor, so a new prompt usually shares all but a few tokens with the last one: those are
cropped off and only the new tokens are run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from fim_lsp.engine import memory


@dataclass(frozen=True)
class CacheFormat:
    """How the KV cache stores keys and values."""

    dtype: torch.dtype | None = None  # None: the model's
    transposed: bool = False  # [heads, head_dim, tokens], for torch's eager attention


class GrowingLayer(DynamicLayer):
    """A layer's keys and values in a buffer with room to spare, doubled when full, in the
    engine's CacheFormat: a dtype (fp16 halves what a decode step reads), and a layout.

    transformers' DynamicLayer appends with `torch.cat`, which copies the whole cache on every
    decode step: at 1,000 tokens that is as many bytes again as the step reads. Here a new token
    is written in place, and `keys`/`values` are views of the filled part, so cropping (the parent's
    slicing) and the attention read only the tokens that are there.

    The views have the usual shape [batch, heads, tokens, head_dim]. The C kernel
    (attention.py) reads each head's tokens as contiguous rows. Stored transposed, as
    [batch, heads, head_dim, tokens], they suit torch's eager attention instead: with one query
    row its two products (`query @ keys.T`, `weights @ values`) then read long contiguous rows.
    """

    def __init__(self, form: CacheFormat | None = None):
        super().__init__()
        self.form = form or CacheFormat()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states, value_states: [batch, heads, new tokens, head_dim]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.key_buffer = self.value_buffer = key_states[..., :0, :]
        start = self.extend(key_states.shape[-2])
        self.keys[..., start:, :] = key_states  # converted to the buffer's dtype
        self.values[..., start:, :] = value_states
        return self.keys, self.values

    def extend(self, count: int) -> int:
        """Room for `count` more tokens, counted in from now on; returns where they start.
        `update` writes them; the CPU decode step (cpu_step.py) writes them in C."""
        start = self.get_seq_length()
        end = start + count
        if end > self.key_buffer.shape[-2]:
            self.key_buffer = self.grown(self.key_buffer, start, end)
            self.value_buffer = self.grown(self.value_buffer, start, end)
        self.keys = self.key_buffer[..., :end, :]
        self.values = self.value_buffer[..., :end, :]
        return start

    def grown(self, buffer: torch.Tensor, length: int, end: int) -> torch.Tensor:
        """A buffer in the cache's format with room for at least twice `end` tokens, holding the
        first `length` of `buffer`; seen, like all buffers here, in the usual shape."""
        batch, heads, _, dim = buffer.shape
        capacity = max(2 * end, 256)
        dtype = self.form.dtype or buffer.dtype
        tokens_last = self.form.transposed
        shape = (batch, heads, dim, capacity) if tokens_last else (batch, heads, capacity, dim)
        if buffer.device.type == "cpu":  # on huge pages, as decode steps stream it
            bigger = memory.empty(shape, dtype)
        else:
            bigger = buffer.new_empty(shape, dtype=dtype)
        if tokens_last:
            bigger = bigger.mT
        if length:
            bigger[..., :length, :] = buffer[..., :length, :]
        return bigger


class PromptCache:
    """The token ids that the model has seen, and their keys and values."""

    def __init__(self, form: CacheFormat | None = None) -> None:
        self.form = form or CacheFormat()
        self.clear()

    def keep(self, prompt: list[int]) -> int:
        """Crop to the longest common prefix with `prompt`, leaving at least one token to run."""
        limit = min(len(self.ids), len(prompt) - 1)
        common = 0
        while common < limit and self.ids[common] == prompt[common]:
            common += 1
        self.drop(len(self.ids) - common)
        return common

    def drop(self, count: int) -> None:
        """Forget the last `count` tokens."""
        if count > 0:
            self.kv.crop(-count)
            del self.ids[-count:]

    def clear(self) -> None:
        self.ids: list[int] = []
        self.kv = Cache(layer_class_to_replicate=functools.partial(GrowingLayer, self.form))
