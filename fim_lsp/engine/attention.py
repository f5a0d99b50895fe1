"""The C attention kernel over the engine's KV cache, for the new tokens of a step.

A decode step reads the whole KV cache once per layer: at 1,000 tokens in fp32 that is 393 MB,
a third of the int8 weights. On a CPU with the C int8 kernels, the engine keeps the cache in fp16
and the new tokens of a step attend through `attention.c`, which converts as it reads (inside
the whole-layer call, cpu_step.py): torch has no fast fp16 matmul on CPUs without AVX-512, and
its fp32 attention reads the cache at 60-75% of the memory bandwidth. Measured on 24 layers at
1,000 tokens (bench/reports/decode-profile-2026-11-26-fp16-kernel.md): 10-12 ms, against 22-27 ms
for torch on an fp32 cache. A prefill chunk's tokens take it too, in blocks over each head's keys:
on one core, 256 new tokens after 768 took 23 ms, against 75 ms for sdpa on fp32 copies of the
cache. Elsewhere attention is torch's sdpa (neox.py).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from fim_lsp.engine import abi
from fim_lsp.engine.native import NativeError, problem


def kernel_problem() -> str | None:
    """Why the C kernel cannot run here, or None when it is built, loaded and checked."""
    return problem(load_kernel)


@functools.cache
def load_kernel() -> ctypes.CDLL:
    """The C library with the attention kernel checked; raises NativeError."""
    library = abi.load()
    check(library)
    return library


def check(library: ctypes.CDLL) -> None:
    """Compare the kernel with torch on a small case, once: a wrong kernel must not run."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 2, 3, 16, generator=generator)
    keys, values = torch.randn(2, 1, 2, 7, 16, generator=generator)
    for dtype in (torch.float32, torch.float16):
        cache = (keys.to(dtype), values.to(dtype))
        scores = (query @ cache[0].float().mT * 0.25).masked_fill(~causal_mask(3, 7), -torch.inf)
        expected = (torch.softmax(scores, dim=-1) @ cache[1].float()).transpose(1, 2)
        got = run_kernel(library, query, *cache, 0.25)
        if got is None or not torch.allclose(got, expected, atol=1e-4):
            raise NativeError("the attention kernel's result differs from torch's")


def causal_mask(new: int, total: int) -> torch.Tensor:
    """Boolean [1, 1, new, total]: new token i (at total - new + i) sees tokens up to itself."""
    positions = torch.arange(total)
    return (positions[None, :] <= positions[-new:, None])[None, None]


def run_kernel(
    library: ctypes.CDLL,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float,
) -> torch.Tensor | None:
    """[1, new, heads, dim] attention output, or None for a case the kernel does not take.

    query: [1, heads, new, dim] fp32; keys, values: [1, heads, tokens, dim], the last `new` of
    the tokens being the query's, each head's tokens contiguous rows (the cache's layout).
    """
    _, heads, new, dim = query.shape
    tokens = keys.shape[2]
    if (
        keys.dtype not in (torch.float32, torch.float16)
        or query.dtype != torch.float32
        or query.shape[0] != 1
        or values.dtype != keys.dtype
        or keys.stride() != values.stride()
        or keys.stride()[2:] != (dim, 1)
    ):
        return None
    query = query.contiguous()
    out = query.new_empty(1, new, heads, dim)
    job = abi.Attention(
        query.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(),
        heads, dim, tokens - new, new, keys.stride(1), scaling, keys.dtype == torch.float16,
    )  # fmt: skip
    status = library.fim_attend(ctypes.byref(job), torch.get_num_threads())
    if status == abi.Status.UNSUPPORTED:
        return None
    abi.check(status, "fim_attend")
    return out
