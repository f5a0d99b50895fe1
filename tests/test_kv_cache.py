"""The growing KV cache against transformers' own DynamicLayer, and the prompt cache's cropping."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from fim_lsp.engine.kv_cache import CacheFormat, GrowingLayer, PromptCache


def states(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 2, tokens, 4, generator=generator),
        torch.randn(1, 2, tokens, 4, generator=generator),
    )


FORMATS = [
    CacheFormat(None, transposed=False),  # the C kernel's, without quantization
    CacheFormat(torch.float16, transposed=False),  # the C kernel's, with int8 weights
    CacheFormat(None, transposed=True),  # torch's eager attention's, where the kernel can't run
]


@pytest.mark.parametrize("form", FORMATS)
def test_growing_layer_holds_what_dynamic_layer_holds_through_appends_and_crops(form):
    growing, dynamic = GrowingLayer(form), DynamicLayer()
    steps = [("add", 300), ("add", 1), ("crop", 5), ("add", 3), ("add", 1), ("crop", 200)]
    steps += [("add", 1)] * 40 + [("add", 700)]
    for seed, (kind, count) in enumerate(steps):
        if kind == "add":
            new = states(count, seed)
            keys, values = growing.update(*new)
            expected_keys, expected_values = dynamic.update(*new)
            assert keys.dtype == values.dtype == (form.dtype or torch.float32)
            # Stored in fp16, a value comes back rounded to fp16, and otherwise unchanged.
            assert torch.equal(keys, expected_keys.to(keys.dtype))
            assert torch.equal(values, expected_values.to(values.dtype))
        else:
            growing.crop(-count)
            dynamic.crop(-count)
        assert growing.get_seq_length() == dynamic.get_seq_length()


@pytest.mark.parametrize("form", FORMATS)
def test_appending_a_token_writes_in_place(form):
    layer = GrowingLayer(form)
    layer.update(*states(300, 0))
    buffer = layer.key_buffer.data_ptr()
    for seed in range(50):
        keys, _ = layer.update(*states(1, seed + 1))
        assert keys.data_ptr() == buffer  # a view of the same buffer: nothing copied
    assert layer.get_seq_length() == 350


@pytest.mark.parametrize("form", FORMATS)
def test_the_layout_is_the_one_attention_reads(form):
    """The kernel reads each head's tokens as contiguous rows; torch's eager attention reads
    each of a head's dimensions as a contiguous row of tokens (transposed storage)."""
    layer = GrowingLayer(form)
    keys, values = layer.update(*states(300, 0))
    assert keys.shape == values.shape == (1, 2, 300, 4)
    row = 2 if form.transposed else 3  # tokens, or a token's dimensions, lie in memory rows
    assert keys.stride(row) == values.stride(row) == 1
    if not form.transposed:
        assert keys.stride(2) == 4  # and a head's tokens one after another
    layer.crop(-5)
    keys, values = layer.update(*states(1, 1))
    assert keys.stride(row) == values.stride(row) == 1
    assert keys.stride() == values.stride()  # the kernel takes one set of strides for both


def test_prompt_cache_keeps_the_common_prefix_and_leaves_one_token_to_run():
    cache = PromptCache()
    cache.ids = [1, 2, 3, 4]
    cache.kv.update(*states(4, 0), layer_idx=0)
    assert cache.keep([1, 2, 9, 9]) == 2
    assert cache.ids == [1, 2] and cache.kv.get_seq_length() == 2
    assert cache.keep([1, 2]) == 1  # the whole prompt is cached: rerun its last token
    assert cache.ids == [1] and cache.kv.get_seq_length() == 1
