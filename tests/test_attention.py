"""The C attention kernel against attention computed in float64, and a chunk against its tokens
one at a time."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import attention
from fim_lsp.engine.kv_cache import KVCache
from tests.reference import causal_attention, normalised_error


def cache(heads, past, new, dim, dtype, seed=0):
    """A query and the views of a KVCache's layer after `past` tokens and then `new` ones."""
    generator = torch.Generator().manual_seed(seed)
    kv = KVCache(1, heads, dim, dtype, torch.device("cpu"))
    for count in (past, new):
        if count:
            kv.reserve(count)
            keys, values = kv.write(0, *torch.randn(2, heads, count, dim, generator=generator))
            kv.ids.extend(range(count))
    return torch.randn(1, heads, new, dim, generator=generator), keys[None], values[None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "heads, past, new, dim",
    [
        (16, 300, 1, 128),
        (4, 0, 5, 16),
        (3, 37, 16, 24),
        (2, 1000, 3, 256),
        (1, 1, 1, 8),
        (2, 0, 37, 128),  # a cold chunk: blocks of 16, 16 and 5 new tokens
        (3, 500, 70, 40),
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: uneven shares, taken from each other
def test_kernel_matches_causal_softmax_attention_in_float64(
    kernels, dtype, heads, past, new, dim, threads, monkeypatch
):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    query, keys, values = cache(heads, past, new, dim, dtype)
    got = attention.run_kernel(kernels, query, keys, values, dim**-0.5)
    assert got is not None and got.shape == (1, new, heads, dim)
    # fp16 keys and values are rounded on the way in; the kernel's arithmetic is fp32 either way:
    # sums of a few hundred products and weights, and e^x within 2e-7 (simd.h), each ~1e-7.
    expected = causal_attention(query, keys.float(), values.float(), dim**-0.5)
    assert normalised_error(got, expected) < 2e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "past, new, dim", [(0, 40, 128), (7, 23, 128), (250, 70, 128), (33, 21, 24), (5, 3, 256)]
)
def test_a_chunk_gives_its_tokens_what_they_get_one_at_a_time(kernels, dtype, past, new, dim):
    """Bit for bit: each token's arithmetic does not depend on the tokens beside it."""
    query, keys, values = cache(3, past, new, dim, dtype, seed=past + new)
    chunk = attention.run_kernel(kernels, query, keys, values, 0.1)
    for i in range(new):
        seen = past + i + 1  # a decode step of token i: the cache holds what it sees
        alone = attention.run_kernel(
            kernels, query[:, :, i : i + 1], keys[:, :, :seen], values[:, :, :seen], 0.1
        )
        assert torch.equal(alone[0, 0], chunk[0, i])


def test_kernel_declines_what_it_does_not_take(kernels):
    library = kernels
    query, keys, values = cache(2, 5, 1, 12, torch.float32)  # dim not a multiple of 8
    assert attention.run_kernel(library, query, keys, values, 0.3) is None
    query, keys, values = cache(2, 5, 1, 16, torch.bfloat16)
    assert attention.run_kernel(library, query, keys, values, 0.3) is None
    query, keys, values = cache(2, 5, 1, 16, torch.float32)
    transposed = keys.mT.contiguous().mT  # tokens no longer contiguous rows
    assert attention.run_kernel(library, query, transposed, transposed, 0.3) is None
    assert attention.run_kernel(library, query.expand(2, -1, -1, -1), keys, values, 0.3) is None
