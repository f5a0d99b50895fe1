"""The engine's memory of the tokens it has run: their ids and their keys and values.

An SPM prompt (`<SUF> suffix <PRE> prefix <MID>`) only grows at its end while the user types at
the cursor, so a new prompt usually shares all but a few tokens with the last one: those are
cropped off and only the new tokens are run.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A layer's keys and values in a buffer with room to spare, doubled when full, stored
    transposed: [batch, heads, head_dim, tokens].

    transformers' DynamicLayer appends with `torch.cat`, which copies the whole cache on every
    decode step: at 1,000 tokens that is as many bytes again as the step reads. Here a new token
    is written in place, and `keys`/`values` are views of the filled part, so cropping (the parent's
    slicing) and the attention read only the tokens that are there.

    The views have the usual shape [batch, heads, tokens, head_dim]; only their strides differ.
    With one query row, eager attention's two products (`query @ keys.T`, `weights @ values`)
    then read the cache as long contiguous rows. With the usual layout both they and sdpa read it
    at about half the memory bandwidth: 24 layers at 1,000 tokens took 49-51 ms there, 28-37 ms
    here (bench/reports/decode-profile-2026-11-26-transposed-cache.md).
    """

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states, value_states: [batch, heads, new tokens, head_dim]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.key_buffer = self.value_buffer = key_states.mT[..., :0]
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if end > self.key_buffer.shape[-1]:
            self.key_buffer = self.grown(self.key_buffer, key_states, length, end)
            self.value_buffer = self.grown(self.value_buffer, value_states, length, end)
        self.key_buffer[..., length:end] = key_states.mT
        self.value_buffer[..., length:end] = value_states.mT
        self.keys = self.key_buffer[..., :end].mT
        self.values = self.value_buffer[..., :end].mT
        return self.keys, self.values

    @staticmethod
    def grown(buffer: torch.Tensor, new: torch.Tensor, length: int, end: int) -> torch.Tensor:
        """A buffer with room for at least twice `end` tokens, holding the first `length`."""
        shape = (*new.shape[:-2], new.shape[-1], max(2 * end, 256))
        bigger = new.new_empty(shape)
        if length:
            bigger[..., :length] = buffer[..., :length]
        return bigger


class PromptCache:
    """The token ids that the model has seen, and their keys and values."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.kv = Cache(layer_class_to_replicate=GrowingLayer)

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
        self.ids = []
        self.kv = Cache(layer_class_to_replicate=GrowingLayer)
