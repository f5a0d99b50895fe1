"""The C attention kernel against attention computed in float64, and the attention chosen."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import attention
from fim_lsp.engine.attention import (
    KERNEL,
    KERNEL_MAX_NEW_TOKENS,
    choose_attention,
)
from fim_lsp.engine.kv_cache import CacheFormat, GrowingLayer
from fim_lsp.engine.precision import Precision


def reference(query, keys, values, scaling):
    """[1, new, heads, dim]: causal softmax attention of the last `new` tokens, in float64."""
    new, total = query.shape[2], keys.shape[2]
    scores = query.double() @ keys.double().mT * scaling
    scores = scores.masked_fill(~attention.causal_mask(new, total), -torch.inf)
    return (torch.softmax(scores, dim=-1) @ values.double()).transpose(1, 2).float()


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
    [(16, 300, 1, 128), (4, 0, 5, 16), (3, 37, 16, 24), (2, 1000, 3, 256), (1, 1, 1, 8)],
)
@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: uneven shares, taken from each other
def test_kernel_matches_causal_softmax_attention(
    dtype, heads, past, new, dim, threads, monkeypatch
):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    query, keys, values = cache(heads, past, new, dim, dtype)
    got = attention.run_kernel(attention.load_kernel(), query, keys, values, dim**-0.5)
    assert got is not None and got.shape == (1, new, heads, dim)
    # fp16 keys and values are rounded on the way in; the kernel's arithmetic is fp32 either way.
    expected = reference(query, keys.float(), values.float(), dim**-0.5)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_kernel_declines_what_it_does_not_take():
    library = attention.load_kernel()
    query, keys, values = cache(2, 5, 1, 12, torch.float32)  # dim not a multiple of 8
    assert attention.run_kernel(library, query, keys, values, 0.3) is None
    query, keys, values = cache(2, 5, 1, 16, torch.bfloat16)
    assert attention.run_kernel(library, query, keys, values, 0.3) is None
    query, keys, values = cache(2, 5, 1, 16, torch.float32)
    transposed = keys.mT.contiguous().mT  # tokens no longer contiguous rows
    assert attention.run_kernel(library, query, transposed, transposed, 0.3) is None
    assert attention.run_kernel(library, query.expand(2, -1, -1, -1), keys, values, 0.3) is None


@pytest.mark.parametrize("new", [1, KERNEL_MAX_NEW_TOKENS, KERNEL_MAX_NEW_TOKENS + 1, 256])
def test_attention_runs_any_run_of_new_tokens_on_an_fp16_cache(new, monkeypatch):
    """Up to KERNEL_MAX_NEW_TOKENS the kernel, past it sdpa on fp32 copies: the same result."""
    calls = []
    run_kernel = attention.run_kernel
    monkeypatch.setattr(attention, "run_kernel", lambda *args: calls.append(1) or run_kernel(*args))
    query, keys, values = cache(4, 40, new, 16, torch.float16)
    mask = attention.causal_mask(new, keys.shape[2])
    out, weights = attention.attention(torch.nn.Module(), query, keys, values, mask, scaling=0.25)
    assert weights is None and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(query, keys, values, 0.25), atol=2e-5, rtol=1e-4)
    assert bool(calls) == (new <= KERNEL_MAX_NEW_TOKENS)


def test_the_kernel_is_chosen_on_cpu_with_an_fp16_cache_for_int8_weights():
    int8 = choose_attention(Precision("cpu", torch.float32, "torch-dynamic", ""))
    assert int8.implementation == KERNEL, int8.reason
    assert int8.cache == CacheFormat(torch.float16, transposed=False)
    exact = choose_attention(Precision("cpu", torch.float32, None, ""))
    assert exact.cache == CacheFormat(None, transposed=False)  # without quantization, fp32
    cuda = choose_attention(Precision("cuda", torch.float16, "bitsandbytes", ""))
    assert (cuda.implementation, cuda.cache) == ("sdpa", CacheFormat(None, transposed=False))
