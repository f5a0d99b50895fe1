"""GPT-NeoX, the network alone: embedding, layers with parallel residuals and partial rotary
embeddings, final layer norm and head. Keys and values go to a KVCache that the engine owns.

The same operations in the same order as transformers' GPTNeoXForCausalLM, so that the logits
are the same (tests/test_neox.py); written here so that the engine depends on no framework's
internals, and so that the C step (cpu_step.py) and the GPU path can run the same weights.
Shapes leave out the batch: one sequence, `n` new tokens after `past` cached ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from fim_lsp.engine.kv_cache import KVCache
from fim_lsp.errors import EngineError


class Cancelled(Exception):
    """A forward pass stopped between layers. The cache holds the tokens it held: the layers that
    ran wrote past them, and those rows are written over later."""


def stop_if(cancel: threading.Event | None) -> None:
    """Between layers: a cancel costs at most one layer of a chunk (~1/24 of it), not the chunk."""
    if cancel is not None and cancel.is_set():
        raise Cancelled


@dataclass(frozen=True)
class Shape:
    """The dimensions and constants of a GPT-NeoX model (from its config.json)."""

    vocab: int  # rows of the embedding (may be padded past the tokenizer's size)
    width: int
    layers: int
    heads: int
    inner: int  # the MLP's width
    rotary: int  # dimensions of each head that turn with the position
    rotary_base: float
    eps: float  # of the layer norms
    positions: int  # tokens the model was trained on
    parallel_residual: bool
    tied_head: bool  # the head reuses the embedding

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_config(cls, config) -> Shape:
        """From a transformers GPTNeoXConfig; EngineError for what this module cannot run."""
        if config.model_type != "gpt_neox":
            raise EngineError(f"a {config.model_type} model: fim-lsp runs GPT-NeoX models")
        rope = dict(config.rope_parameters or {})
        if rope.get("rope_type", "default") != "default" or config.hidden_act != "gelu":
            raise EngineError(
                f"rotary embedding {rope.get('rope_type')!r} or activation {config.hidden_act!r}: "
                "fim-lsp runs GPT-NeoX with default rotary embeddings and exact GELU"
            )
        head_dim = config.hidden_size // config.num_attention_heads
        return cls(
            vocab=config.vocab_size,
            width=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            inner=config.intermediate_size,
            rotary=int(head_dim * rope.get("partial_rotary_factor", 1.0)),
            rotary_base=float(rope.get("rope_theta", 10000.0)),
            eps=config.layer_norm_eps,
            positions=config.max_position_embeddings,
            parallel_residual=config.use_parallel_residual,
            tied_head=bool(getattr(config, "tie_word_embeddings", False)),
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the first `rotary` dims of each head by position; the rest pass.
    q, k: [heads, n, head_dim]; cos, sin: [n, rotary]."""
    rotary = cos.shape[-1]
    turned = [
        torch.cat(
            [(x[..., :rotary] * cos) + (rotate_half(x[..., :rotary]) * sin), x[..., rotary:]], -1
        )
        for x in (q, k)
    ]
    return turned[0], turned[1]


class Layer(nn.Module):
    def __init__(self, shape: Shape, device: torch.device | str | None = None):
        super().__init__()
        self.shape = shape
        self.norm_attention = nn.LayerNorm(shape.width, eps=shape.eps, device=device)
        self.norm_mlp = nn.LayerNorm(shape.width, eps=shape.eps, device=device)
        self.qkv = nn.Linear(shape.width, 3 * shape.width, device=device)
        self.dense = nn.Linear(shape.width, shape.width, device=device)
        self.up = nn.Linear(shape.width, shape.inner, device=device)
        self.down = nn.Linear(shape.inner, shape.width, device=device)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, index: int
    ) -> torch.Tensor:
        # x: [n, width]
        attention = self.attend(self.norm_attention(x), cos, sin, cache, index)
        if self.shape.parallel_residual:
            return self.mlp(self.norm_mlp(x)) + attention + x
        x = attention + x
        return self.mlp(self.norm_mlp(x)) + x

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x)))

    def attend(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, index: int
    ) -> torch.Tensor:
        n, heads, dim = x.shape[0], self.shape.heads, self.shape.head_dim
        qkv = self.qkv(x).view(n, heads, 3 * dim).transpose(0, 1)  # [heads, n, 3 * dim]
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = apply_rotary(q, k, cos, sin)
        keys, values = cache.write(index, k, v)  # [heads, past + n, dim], in the cache's dtype
        keys, values = keys.to(q.dtype), values.to(q.dtype)
        total = keys.shape[1]
        if n == 1 or total == n:  # one new token sees everything; a first run is causal
            mask = None
        else:  # new token i sits at total - n + i and sees the tokens up to itself
            positions = torch.arange(total, device=x.device)
            mask = positions[None, :] <= positions[total - n :, None]
        out = nn.functional.scaled_dot_product_attention(
            q[None], keys[None], values[None], attn_mask=mask,
            is_causal=n > 1 and total == n, scale=dim**-0.5,
        )  # fmt: skip
        return self.dense(out[0].transpose(0, 1).reshape(n, self.shape.width))


class NeoX(nn.Module):
    def __init__(self, shape: Shape, device: torch.device | str | None = None):
        """The model on `device`, its parameters not yet loaded: built on the meta device, then
        given the checkpoint's (weights.py) or the weight cache's tensors.

        `device`, not a `with torch.device(...)` block: within one, factory calls and random
        initialisation on the meta device run torch's Python references, whose first use
        imports torch's compiler and sympy (2-3 s of a start from the weight cache); for the
        same reason the rotary frequencies start on the CPU (the loaders put them on the
        model's device)."""
        super().__init__()
        self.shape = shape
        # Never drawn at random: its weights always come from a checkpoint.
        self.embed = nn.Embedding.from_pretrained(
            torch.empty(shape.vocab, shape.width, device=device)
        )
        self.layers = nn.ModuleList(Layer(shape, device) for _ in range(shape.layers))
        self.final_norm = nn.LayerNorm(shape.width, eps=shape.eps, device=device)
        self.head = nn.Linear(shape.width, shape.vocab, bias=False, device=device)
        self.register_buffer("inverse_frequencies", self.frequencies(), persistent=False)

    def frequencies(self, device: torch.device | str | None = None) -> torch.Tensor:
        steps = torch.arange(0, self.shape.rotary, 2, dtype=torch.float, device=device)
        return 1.0 / (self.shape.rotary_base ** (steps / self.shape.rotary))

    def rotary(self, start: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [n, rotary] of positions start .. start + n - 1."""
        frequencies = self.inverse_frequencies
        positions = torch.arange(start, start + n, device=frequencies.device)
        angles = positions[:, None].float() * frequencies
        both = torch.cat((angles, angles), dim=-1)
        return both.cos().to(dtype), both.sin().to(dtype)

    def forward(
        self, ids: list[int], cache: KVCache, keep: int = 1, cancel: threading.Event | None = None
    ) -> torch.Tensor:
        """Logits [keep, vocab] of the last `keep` of the new tokens `ids`; their keys and values
        are written to `cache` after the tokens it holds (the caller records the ids). Raises
        Cancelled between layers once `cancel` is set."""
        tokens = torch.tensor(ids, device=self.inverse_frequencies.device)
        x = self.embed(tokens)  # [n, width]
        cache.reserve(len(ids))
        cos, sin = self.rotary(cache.length, len(ids), x.dtype)
        for index, layer in enumerate(self.layers):
            stop_if(cancel)
            x = layer(x, cos, sin, cache, index)
        return self.head(self.final_norm(x[-keep:]))
