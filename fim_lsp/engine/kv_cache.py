"""The engine's memory of the tokens it has run: their ids, and their keys and values per layer.

An SPM prompt (`<SUF> suffix <PRE> prefix <MID>`) only grows at its end while the user types at
the cursor, so a new prompt usually shares all but a few tokens with the last one: those are
dropped and only the new tokens are run.

Each layer's keys and values sit in one buffer [heads, capacity, head_dim] with room to spare,
doubled when full: a new token is written in place (a cache grown by concatenation copies
itself on every step), and each head's tokens are contiguous rows, as the C kernels read them.
On a CPU the buffers are on huge pages (memory.py): a decode step streams all of them.
"""

from __future__ import annotations

import torch

from fim_lsp.engine import memory

MIN_CAPACITY = 256  # tokens: the first allocation


class KVCache:
    def __init__(
        self, layers: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ):
        self.ids: list[int] = []  # the tokens whose keys and values are held, in order
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
            capacity = max(2 * end, MIN_CAPACITY)
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

    def keep(self, prompt: list[int]) -> int:
        """Drop what `prompt` does not share from its start, keeping at least one token of the
        prompt to run; returns how many tokens are kept."""
        limit = min(self.length, len(prompt) - 1)
        common = 0
        while common < limit and self.ids[common] == prompt[common]:
            common += 1
        self.drop(self.length - common)
        return common

    def drop(self, count: int) -> None:
        """Forget the last `count` tokens (their rows are written over later)."""
        if count > 0:
            del self.ids[-count:]

    def clear(self) -> None:
        self.ids.clear()
