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

import torch
from transformers.cache_utils import Cache

from fim_lsp.engine import abi
from fim_lsp.engine.abi import Fused, LayerRun, LayerWeights
from fim_lsp.engine.attention import KERNEL, AttentionPlan
from fim_lsp.engine.attention import load_kernel as load_attention
from fim_lsp.engine.linear import Int8Linear, run_into
from fim_lsp.engine.linear import load_kernel as load_linear
from fim_lsp.engine.native import NativeError, problem
from fim_lsp.engine.precision import C_KERNEL, Precision


class CpuStep:
    """The model's forward pass for new tokens after the cached ones."""

    def __init__(self, model):
        self.model = model
        attention = model.gpt_neox.layers[0].attention
        self.heads = model.config.num_attention_heads
        self.head_dim = attention.head_size
        self.rotary = attention.rotary_ndims
        self.scaling = attention.scaling
        self.library = load_kernel()
        self.norms: list[torch.Tensor] = []
        # The layer norms and GELU run inside the int8 kernel (see the module's docstring).
        self.layers = [
            LayerWeights(
                ctypes.pointer(layer.attention.query_key_value.kernel_weights),
                ctypes.pointer(layer.attention.dense.kernel_weights),
                ctypes.pointer(layer.mlp.dense_h_to_4h.kernel_weights),
                ctypes.pointer(layer.mlp.dense_4h_to_h.kernel_weights),
                self.normed(layer.input_layernorm),
                self.normed(layer.post_attention_layernorm, gelu=True),
            )
            for layer in model.gpt_neox.layers
        ]
        self.before_head = self.normed(model.gpt_neox.final_layer_norm)

    @staticmethod
    def problem(model, precision: Precision, plan: AttentionPlan) -> str | None:
        """Why this step cannot run `model` in `precision` with attention `plan`, or None."""
        config = model.config
        if config.model_type != "gpt_neox" or not config.use_parallel_residual:
            return f"a {config.model_type} model without GPT-NeoX's parallel residuals"
        if config.hidden_act != "gelu":
            return f"activation {config.hidden_act}"
        attention = model.gpt_neox.layers[0].attention
        if (
            attention.head_size % 8
            or attention.head_size > abi.MAX_DIM
            or attention.rotary_ndims % 2
        ):
            return (
                f"heads of {attention.head_size} dims "
                f"(attention.c takes multiples of 8 to {abi.MAX_DIM})"
            )
        if plan.implementation != KERNEL or plan.cache.dtype != torch.float16:
            return "attention is not the C kernel on an fp16 cache"
        if precision.int8 != C_KERNEL:  # the loader then makes every linear layer Int8Linear
            return "the linear layers are not the C int8 kernel's"
        return problem(load_kernel)

    def __call__(self, kv: Cache, ids: list[int], keep: int) -> torch.Tensor:
        """Logits [keep, vocab] of the last `keep` of `ids`, the new tokens; their keys and
        values are added to `kv`."""
        neox = self.model.gpt_neox
        new = len(ids)
        x = neox.embed_in(torch.tensor(ids))  # [new, width]
        if not kv.layers:  # a cold prompt: empty layers, which take the cache's format as they grow
            empty = torch.empty(1, self.heads, 0, self.head_dim)
            for index in range(len(self.layers)):
                kv.update(empty, empty, index)
        layers = kv.layers
        past = layers[0].get_seq_length()
        cos, sin = (
            t[0].contiguous() for t in neox.rotary_emb(x, torch.arange(past, past + new)[None])
        )
        # The hidden state takes turns in two buffers: each layer reads one and writes the other.
        states = (x, torch.empty_like(x))
        run = LayerRun(
            new, self.heads, self.head_dim, self.rotary, past, 0, self.scaling,
            cos.data_ptr(), sin.data_ptr(),
        )  # fmt: skip
        threads = torch.get_num_threads()
        for turn, (weights, cache) in enumerate(zip(self.layers, layers, strict=True)):
            cache.extend(new)  # room for the new tokens; the buffers may have moved
            run.keys, run.values = cache.key_buffer.data_ptr(), cache.value_buffer.data_ptr()
            run.head_stride = cache.key_buffer.stride(1)
            run.x, run.after = states[turn % 2].data_ptr(), states[1 - turn % 2].data_ptr()
            self.layer(weights, run, threads)
        x = states[len(layers) % 2]
        head = self.model.lm_head
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
    """Compare `fim_rope_store` with transformers' rotary embedding and an fp16 cache write, bit
    for bit, on a small case: the step must give what transformers' modules give."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

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
    q, k, v = qkv.view(1, new, heads, 3 * dim).transpose(1, 2).chunk(3, dim=-1)
    q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    cached = slice(past, past + new)
    if not (
        torch.equal(query, q[0])
        and torch.equal(keys[:, cached], k[0].half())
        and torch.equal(values[:, cached], v[0].half())
        and not keys[:, :past].any()
    ):
        raise NativeError("the rotary embedding kernel's result differs from transformers'")
