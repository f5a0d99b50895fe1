"""The C attention kernel against attention computed in float64, a chunk against its tokens one at a
time, and the attention chosen."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import attention
from fim_lsp.engine.attention import KERNEL, choose_attention
from fim_lsp.engine.kv_cache import CacheFormat, GrowingLayer
from fim_lsp.engine.precision import Precision
from tests.reference import causal_attention, normalised_error


def cache(heads, past, new, dim, dtype, seed=0):
    """A query and the views a GrowingLayer returns after `past` tokens and then `new` ones."""
    generator = torch.Generator().manual_seed(seed)
    layer = GrowingLayer(CacheFormat(dtype, transposed=False))
    for count in (past, new):
        if count:
            states = torch.randn(2, 1, heads, count, dim, generator=generator)
            keys, values = layer.update(*states)
    return torch.randn(1, heads, new, dim, generator=generator), keys, values


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
@pytest.mark.parametrize("past, new, dim", [(0, 40, 128), (33, 21, 24), (5, 3, 256)])
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


@pytest.mark.parametrize("new", [1, 16, 17, 256])
def test_attention_runs_any_run_of_new_tokens_on_an_fp16_cache_in_the_kernel(
    kernels, new, monkeypatch
):
    calls = []
    run_kernel = attention.run_kernel
    monkeypatch.setattr(attention, "run_kernel", lambda *args: calls.append(1) or run_kernel(*args))
    query, keys, values = cache(4, 40, new, 16, torch.float16)
    mask = attention.causal_mask(new, keys.shape[2])
    out, weights = attention.attention(torch.nn.Module(), query, keys, values, mask, scaling=0.25)
    assert weights is None and out.dtype == torch.float32
    assert normalised_error(out, causal_attention(query, keys, values, 0.25)) < 2e-6
    assert calls


def test_the_kernel_is_chosen_on_cpu_with_an_fp16_cache_for_int8_weights(kernels):
    int8 = choose_attention(Precision("cpu", torch.float32, "torch-dynamic", ""))
    assert int8.implementation == KERNEL, int8.reason
    assert int8.cache == CacheFormat(torch.float16, transposed=False)
    exact = choose_attention(Precision("cpu", torch.float32, None, ""))
    assert exact.cache == CacheFormat(None, transposed=False)  # without quantization, fp32
    cuda = choose_attention(Precision("cuda", torch.float16, "bitsandbytes", ""))
    assert (cuda.implementation, cuda.cache) == ("sdpa", CacheFormat(None, transposed=False))
