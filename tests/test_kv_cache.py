"""The engine's KV cache: writes in place, grows keeping what it holds, keeps common prefixes."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine.kv_cache import MIN_CAPACITY, KVCache


def states(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, tokens, 4, generator=generator).unbind(0)


def add(cache: KVCache, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    cache.reserve(tokens)
    keys, values = states(tokens, seed)
    for layer in range(len(cache.keys)):
        written = cache.write(layer, keys, values)
    cache.ids.extend(range(seed * 1000, seed * 1000 + tokens))
    return written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_cache_holds_what_was_written_through_growth_and_drops(dtype):
    cache = KVCache(2, 2, 4, dtype, torch.device("cpu"))
    expected_keys: list[torch.Tensor] = []
    for seed, (kind, count) in enumerate(
        [("add", 300), ("add", 1), ("drop", 5), ("add", 3), ("drop", 200), ("add", 700)]
    ):
        if kind == "add":
            keys, _ = add(cache, count, seed)
            expected_keys.append(states(count, seed)[0])
            held = torch.cat(expected_keys, dim=1)
            # Stored in fp16, a value comes back rounded to fp16, and otherwise unchanged.
            assert keys.dtype == dtype and torch.equal(keys, held.to(dtype))
        else:
            cache.drop(count)
            held = torch.cat(expected_keys, dim=1)[:, : cache.length]
            expected_keys = [held]
        assert cache.length == held.shape[1] <= cache.capacity


def test_appending_a_token_writes_in_place_and_rows_are_contiguous_per_head():
    cache = KVCache(1, 2, 4, torch.float16, torch.device("cpu"))
    add(cache, 300, 0)
    buffer = cache.keys[0].data_ptr()
    for seed in range(50):
        keys, _ = add(cache, 1, seed + 1)
        assert keys.data_ptr() == buffer  # a view of the same buffer: nothing copied
    assert cache.keys[0].stride() == (cache.capacity * 4, 4, 1)  # as the C kernels read it
    assert cache.capacity >= 350 and cache.capacity >= MIN_CAPACITY


def test_writing_past_the_reserved_room_is_refused():
    cache = KVCache(1, 2, 4, torch.float32, torch.device("cpu"))
    with pytest.raises(AssertionError, match="reserve"):
        cache.write(0, *states(1, 0))


def test_keep_drops_what_differs_and_leaves_one_token_to_run():
    cache = KVCache(1, 2, 4, torch.float32, torch.device("cpu"))
    add(cache, 4, 0)
    cache.ids[:] = [1, 2, 3, 4]
    assert cache.keep([1, 2, 9, 9]) == 2
    assert cache.ids == [1, 2]
    assert cache.keep([1, 2]) == 1  # the whole prompt is cached: rerun its last token
    assert cache.ids == [1] and cache.nbytes == 2 * cache.keys[0].nbytes
