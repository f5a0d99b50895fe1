"""The engine's KV cache: writes in place, grows keeping what it holds, keeps common prefixes."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine.kv_cache import MIN_CAPACITY, KVCache, PromptStore


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


def store_with(prompt: list[int], budget: int = 1 << 30) -> tuple[PromptStore, KVCache]:
    store = PromptStore(lambda: KVCache(2, 2, 4, torch.float32, torch.device("cpu")))
    cache, cached = store.take(prompt, budget)
    assert cached == 0
    add_ids(cache, prompt)
    return store, cache


def add_ids(cache: KVCache, ids: list[int]) -> None:
    """As a forward pass leaves it: keys and values for `ids` (a value per token), then the ids."""
    cache.reserve(len(ids))
    start = cache.length
    values = torch.arange(start, start + len(ids), dtype=torch.float32)
    rows = values[None, :, None].expand(2, len(ids), 4)
    for layer in range(len(cache.keys)):
        cache.write(layer, rows, rows)
    cache.ids.extend(ids)


def test_typing_at_the_cursor_goes_on_in_the_same_cache():
    prompt = list(range(500))
    store, cache = store_with(prompt)
    add_ids(cache, [900, 901, 902])  # the suggestion's tokens
    typed = [*prompt[:-1], 7, 8, prompt[-1]]  # two tokens typed before <MID>
    again, cached = store.take(typed, 1 << 30)
    assert again is cache and cached == len(prompt) - 1 and cache.ids == prompt[:-1]
    assert len(store.caches) == 1


def test_a_move_gets_a_cache_of_its_own_and_going_back_is_warm():
    here = list(range(500))
    store, cache = store_with(here)
    there = [0, 1, *range(1000, 1400)]  # the suffix changed after its first tokens
    moved, cached = store.take(there, 1 << 30)
    assert moved is not cache and cached == 2 and moved.ids == [0, 1]
    assert torch.equal(moved.keys[0][:, :2], cache.keys[0][:, :2])  # the shared part copied
    add_ids(moved, there[2:])
    back, cached = store.take(here, 1 << 30)
    assert back is cache and cached == len(here) - 1  # nothing to prefill again
    assert store.caches == [cache, moved]  # most recently used first


def test_the_least_recently_used_caches_go_past_the_budget():
    store, first = store_with(list(range(300)))
    one = first.nbytes
    second, _ = store.take(list(range(1000, 1300)), 1 << 30)
    add_ids(second, list(range(1000, 1300)))
    third, _ = store.take(list(range(2000, 2300)), 2 * one + 1)
    assert store.caches == [third, second]
    store.take(list(range(3000, 3300)), 0)
    assert len(store.caches) == 1  # the prompt in use always stays
