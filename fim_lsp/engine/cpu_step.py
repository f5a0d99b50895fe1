"""A forward pass of new tokens after the cached ones on a CPU, in one C call per layer (`layer.c`).

transformers' GPT-NeoX layer runs about forty torch operators per layer for one new token (the
rotary embedding by slicing and concatenating, the cache write, reshapes, layer norms, GELU, the
residual sums). Each is cheap alone, but between the int8 kernels, which stream megabytes of
weights through the caches, each starts cold: GELU took 130 us there against 22 us alone, and the
operators together 14-16 ms of a 100-120 ms decode step on a 2-core CPU. Here a layer is one C
call: the int8 products, with the layer norms, GELU and residual sums done inside them, the
rotary embedding and the fp16 cache write, and attention, in three rounds of work shared by one
team of threads (see layer.c for why).

The layer norms and GELU are computed in C, so the logits differ from transformers' in the last
bits (tested within 1e-5 of their largest, with the same greedy tokens): about as much as the
attention kernel differs from torch's sdpa.

It runs decode steps, draft checks, warm keystrokes and prefill chunks (a cold prompt too) when
the C kernels run the model: int8 through `linear.c` (a chunk's products on gemm.c's register
tiles), attention through `attention.c` on an fp16 cache, and a GPT-NeoX with parallel residuals
and exact GELU. Every token's arithmetic is its own, so a chunk gives the logits its tokens give
one at a time, bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
import threading

import torch

from fim_lsp.engine import abi
from fim_lsp.engine.abi import Fused, LayerRun, LayerWeights
from fim_lsp.engine.attention import load_kernel as load_attention
from fim_lsp.engine.choices import Precision
from fim_lsp.engine.kv_cache import KVCache
from fim_lsp.engine.linear import Int8Linear, run_into
from fim_lsp.engine.linear import load_kernel as load_linear
from fim_lsp.engine.native import NativeError, problem
from fim_lsp.engine.neox import NeoX, apply_rotary, stop_if


class CpuStep:
    """The model's forward pass for new tokens after the cached ones."""

    def __init__(self, model: NeoX):
        self.model = model
        shape = model.shape
        self.heads, self.head_dim, self.rotary = shape.heads, shape.head_dim, shape.rotary
        self.scaling = shape.head_dim**-0.5
        self.library = load_kernel()
        self.norms: list[torch.Tensor] = []
        # The layer norms and GELU run inside the int8 kernel (see the module's docstring).
        self.layers = [
            LayerWeights(
                ctypes.pointer(layer.qkv.kernel_weights),
                ctypes.pointer(layer.dense.kernel_weights),
                ctypes.pointer(layer.up.kernel_weights),
                ctypes.pointer(layer.down.kernel_weights),
                self.normed(layer.norm_attention),
                self.normed(layer.norm_mlp, gelu=True),
            )
            for layer in model.layers
        ]
        self.before_head = self.normed(model.final_norm)

    @staticmethod
    def problem(model: NeoX, precision: Precision) -> str | None:
        """Why this step cannot run `model` in `precision`, or None."""
        shape = model.shape
        if precision.int8 is None or not precision.int8.c_step:
            return "the linear layers are not the C int8 kernel's"
        if not shape.parallel_residual:
            return "a GPT-NeoX without parallel residuals"
        if shape.head_dim % 8 or shape.head_dim > abi.MAX_DIM or shape.rotary % 2:
            return f"heads of {shape.head_dim} dims (attention.c takes multiples of 8 to {abi.MAX_DIM})"
        return problem(load_kernel)

    def __call__(
        self, cache: KVCache, ids: list[int], keep: int, cancel: threading.Event | None = None
    ) -> torch.Tensor:
        """Logits [keep, vocab] of the last `keep` of `ids`, the new tokens; their keys and
        values are written to `cache` after its tokens (the caller records the ids). Raises
        neox.Cancelled between layers once `cancel` is set."""
        new, past = len(ids), cache.length
        x = self.model.embed(torch.tensor(ids))  # [new, width]
        cos, sin = (t.contiguous() for t in self.model.rotary(past, new, x.dtype))
        cache.reserve(new)  # the buffers may move
        # The hidden state takes turns in two buffers: each layer reads one and writes the other.
        states = (x, torch.empty_like(x))
        run = LayerRun(
            new, self.heads, self.head_dim, self.rotary, past, cache.keys[0].stride(0),
            self.scaling, cos.data_ptr(), sin.data_ptr(),
        )  # fmt: skip
        threads = torch.get_num_threads()
        for turn, weights in enumerate(self.layers):
            stop_if(cancel)
            run.keys, run.values = cache.keys[turn].data_ptr(), cache.values[turn].data_ptr()
            run.x, run.after = states[turn % 2].data_ptr(), states[1 - turn % 2].data_ptr()
            self.layer(weights, run, threads)
        x = states[len(self.layers) % 2]
        head = self.model.head
        logits = x.new_empty(keep, head.out_features)
        self.linear(head, x[-keep:], logits, threads, self.before_head)
        return logits

    def normed(self, norm: torch.nn.LayerNorm, gelu: bool = False) -> Fused:
        """A layer norm before the kernel's product, and GELU after it if `gelu`. The norm's
        weights are copied (a few KB) so that the pointers stay valid wherever the model's go;
        the int8 layers keep theirs current (Int8Linear.point_kernel)."""
        weight, bias = (p.detach().float().clone() for p in (norm.weight, norm.bias))
        self.norms += [weight, bias]
        return Fused(weight.data_ptr(), bias.data_ptr(), norm.eps, gelu)

    def layer(self, weights: LayerWeights, run: LayerRun, threads: int) -> None:
        abi.check(
            self.library.fim_layer(ctypes.byref(weights), ctypes.byref(run), threads), "fim_layer"
        )

    def linear(
        self,
        layer: Int8Linear,
        x: torch.Tensor,
        out: torch.Tensor,
        threads: int,
        fused: Fused | None = None,
    ) -> None:
        run_into(self.library, layer, x, out, threads, fused)


@functools.cache
def load_kernel() -> ctypes.CDLL:
    """The C library with both kernels and `fim_rope_store` checked; raises NativeError."""
    library = load_linear()
    load_attention()
    check(library)
    return library


def check(library: ctypes.CDLL) -> None:
    """Compare `fim_rope_store` with the model's rotary embedding (neox.py) and an fp16 cache
    write, bit for bit, on a small case: the step must give what the torch modules give."""
    generator = torch.Generator().manual_seed(0)
    new, heads, dim, rotary, past, capacity = 3, 2, 16, 8, 4, 9
    qkv = torch.randn(new, heads, 3 * dim, generator=generator)
    angles = torch.randn(new, rotary // 2, generator=generator).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    query = torch.empty(heads, new, dim)
    keys, values = torch.zeros(2, heads, capacity, dim, dtype=torch.float16)
    run = LayerRun(
        new, heads, dim, rotary, past, capacity * dim, 0.0,
        cos.data_ptr(), sin.data_ptr(), keys.data_ptr(), values.data_ptr(),
    )  # fmt: skip
    status = library.fim_rope_store(ctypes.byref(run), qkv.data_ptr(), query.data_ptr(), 0, new)
    abi.check(status, "fim_rope_store")
    q, k, v = qkv.transpose(0, 1).chunk(3, dim=-1)  # [heads, new, dim] each
    q, k = apply_rotary(q, k, cos, sin)
    cached = slice(past, past + new)
    if not (
        torch.equal(query, q)
        and torch.equal(keys[:, cached], k.half())
        and torch.equal(values[:, cached], v.half())
        and not keys[:, :past].any()
    ):
        raise NativeError("the rotary embedding kernel's result differs from the model's")
