"""The growing KV cache against transformers' own DynamicLayer, and the prompt cache's cropping."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from fim_lsp.engine.kv_cache import GrowingLayer, PromptCache


def states(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 2, tokens, 4, generator=generator),
        torch.randn(1, 2, tokens, 4, generator=generator),
    )


def test_growing_layer_holds_what_dynamic_layer_holds_through_appends_and_crops():
    growing, dynamic = GrowingLayer(), DynamicLayer()
    steps = [("add", 300), ("add", 1), ("crop", 5), ("add", 3), ("add", 1), ("crop", 200)]
    steps += [("add", 1)] * 40 + [("add", 700)]
    for seed, (kind, count) in enumerate(steps):
        if kind == "add":
            new = states(count, seed)
            keys, values = growing.update(*new)
            expected_keys, expected_values = dynamic.update(*new)
            assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
        else:
            growing.crop(-count)
            dynamic.crop(-count)
        assert growing.get_seq_length() == dynamic.get_seq_length()


def test_appending_a_token_writes_in_place():
    layer = GrowingLayer()
    layer.update(*states(300, 0))
    buffer = layer.key_buffer.data_ptr()
    for seed in range(50):
        keys, _ = layer.update(*states(1, seed + 1))
        assert keys.data_ptr() == buffer  # a view of the same buffer: nothing copied
    assert layer.get_seq_length() == 350


def test_tokens_lie_next_to_each_other_in_memory():
    """Transposed storage: one query's products with the keys and values read long rows."""
    layer = GrowingLayer()
    keys, values = layer.update(*states(300, 0))
    assert keys.shape == values.shape == (1, 2, 300, 4)
    assert keys.stride(-2) == values.stride(-2) == 1
    layer.crop(-5)
    keys, values = layer.update(*states(1, 1))
    assert keys.stride(-2) == values.stride(-2) == 1


def test_prompt_cache_keeps_the_common_prefix_and_leaves_one_token_to_run():
    cache = PromptCache()
    cache.ids = [1, 2, 3, 4]
    cache.kv.update(*states(4, 0), layer_idx=0)
    assert cache.keep([1, 2, 9, 9]) == 2
    assert cache.ids == [1, 2] and cache.kv.get_seq_length() == 2
    assert cache.keep([1, 2]) == 1  # the whole prompt is cached: rerun its last token
    assert cache.ids == [1] and cache.kv.get_seq_length() == 1
