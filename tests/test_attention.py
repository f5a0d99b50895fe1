"""The C attention kernel against attention computed in float64."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import attention
from fim_lsp.engine.kv_cache import KVCache


def reference(query, keys, values, scaling):
    """[1, new, heads, dim]: causal softmax attention of the last `new` tokens, in float64."""
    new, total = query.shape[2], keys.shape[2]
    scores = query.double() @ keys.double().mT * scaling
    scores = scores.masked_fill(~attention.causal_mask(new, total), -torch.inf)
    return (torch.softmax(scores, dim=-1) @ values.double()).transpose(1, 2).float()


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
