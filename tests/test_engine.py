"""The engine on a tiny real model: the decode loop, KV-cache reuse, stops, cancel, loading."""

from __future__ import annotations

import re
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from fim_lsp.backend import GenerationOptions
from fim_lsp.engine import EngineError, abi, choose, load_engine, resolve_model
from tests.fakes import SetAfter

VOCAB = 50280  # the tokenizer's size; the model's embedding has 50304 rows


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")


def reference_greedy(folder, prompt: list[int], count: int) -> list[int]:
    """Greedy tokens computed the slow way, by transformers as it comes (sdpa attention): the
    whole sequence again for every token, no cache."""
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(count):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1, :VOCAB]
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt) :]


def generate(
    engine,
    prompt,
    count,
    end_id=-1,
    temperature=0.0,
    seed=None,
    draft_tokens=8,
    cache_reuse=True,
    cache_memory_mb=1024,
    **kwargs,
):
    options = GenerationOptions(
        count, end_id, temperature, draft_tokens, cache_reuse, cache_memory_mb, seed
    )
    return engine.generate(prompt, options, **kwargs)


PROMPT = [50277, 32488, 535, 50274, 18891, 426, 1269, 559, 340, 50278, 1545, 4868, 9, 89, 50279]


def test_decode_loop_with_cache_matches_recomputing_everything(engine, tiny_model_dir):
    generation = generate(engine, PROMPT, 12, end_id=-1)
    assert generation.ids == reference_greedy(tiny_model_dir, PROMPT, 12)
    assert generation.stop_reason == "length"
    assert generation.prompt_tokens == len(PROMPT)


def test_padded_vocabulary_rows_are_never_generated(engine):
    generation = generate(engine, PROMPT, 20, end_id=-1, temperature=5.0, seed=1)
    assert max(generation.ids) < VOCAB


def test_reused_cache_gives_the_same_tokens_as_a_cold_run(engine, tiny_model_dir):
    cold = load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")
    generate(engine, PROMPT, 8, end_id=-1)
    for prompt in (
        [*PROMPT[:-1], 13, 340, 50279],  # typed two more tokens at the cursor
        [*PROMPT[:-2], 50279],  # backspace
        [*PROMPT[:3], 999, 998, *PROMPT[5:]],  # an edit higher up in the suffix
    ):
        warm = generate(engine, prompt, 8, end_id=-1)
        assert warm.ids == generate(cold, prompt, 8, cache_reuse=False).ids
        assert warm.cached_tokens > 0
        assert cold.cache.ids == prompt + generate(cold, prompt, 8, cache_reuse=False).ids[:-1]
    typed = [*PROMPT[:-1], 13, 340, 50279]
    engine.store.clear()
    generate(engine, PROMPT, 8, end_id=-1)
    assert generate(engine, typed, 1, end_id=-1).cached_tokens == len(PROMPT) - 1


def test_end_token_stops_and_is_not_returned(engine):
    first = generate(engine, PROMPT, 5, end_id=-1).ids
    generation = generate(engine, PROMPT, 5, end_id=first[2])
    assert generation.ids == first[:2] and generation.stop_reason == "end"


def test_should_stop_ends_generation_at_once(engine):
    generation = generate(engine, PROMPT, 30, end_id=-1, should_stop=lambda ids: len(ids) == 4)
    assert len(generation.ids) == 4 and generation.stop_reason == "stop"


def test_cancel_stops_within_one_token(engine):
    cancel = threading.Event()

    def cancel_after_three(ids: list[int]) -> bool:
        if len(ids) == 3:
            cancel.set()  # as the server's loop would, from another thread
        return False

    generation = generate(
        engine, PROMPT, 50, end_id=-1, should_stop=cancel_after_three, cancel=cancel
    )
    assert len(generation.ids) == 3 and generation.stop_reason == "cancelled"


def test_cancel_before_prefill_runs_nothing(engine):
    cancel = threading.Event()
    cancel.set()
    generation = generate(engine, [*PROMPT[:-1], 7, 50279], 5, end_id=-1, cancel=cancel)
    assert generation.ids == [] and generation.stop_reason == "cancelled"


def test_a_cancel_stops_prefill_between_layers_and_keeps_the_chunks_run(engine, tiny_model_dir):
    prompt = [*PROMPT, *range(300, 305)]  # 20 tokens: chunks of 8, 8 and 4
    layers = engine.model.shape.layers
    engine.store.clear()
    engine.cache, _ = engine.store.take(prompt, 1 << 30)  # as generate() takes it
    with torch.inference_mode():
        # The first chunk runs; the second stops after its first layer.
        assert engine.prefill(prompt, SetAfter(layers + 1), chunk=8) is None
    assert engine.cache.ids == prompt[:8]
    generation = generate(engine, prompt, 6)
    assert generation.cached_tokens == 8
    assert generation.ids == reference_greedy(tiny_model_dir, prompt, 6)


def test_int8_loads_through_bitsandbytes_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    engine = load_engine(
        str(tiny_model_dir), VOCAB, device="cpu", quantization="int8", int8_backend="bitsandbytes"
    )
    layers = [m for m in engine.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(layers) == 2 * 4 + 1 and engine.precision.quantization == "int8 (bitsandbytes)"
    assert len(generate(engine, PROMPT, 4, end_id=-1).ids) == 4


def test_int8_through_torch_dynamic_layers_on_cpu(tiny_model_dir):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    engine = load_engine(
        str(tiny_model_dir), VOCAB, device="cpu", quantization="int8", int8_backend="torch-dynamic"
    )
    modules = list(engine.model.modules())
    assert any(isinstance(m, DynamicLinear) for m in modules)
    assert not any(type(m) is torch.nn.Linear for m in modules)  # lm_head included
    assert {p.dtype for p in engine.model.parameters()} == {torch.float32}
    assert len(generate(engine, PROMPT, 4, end_id=-1).ids) == 4


def test_int8_through_the_c_kernel_on_cpu(kernels, tiny_model_dir):
    from fim_lsp.engine.linear import Int8Linear

    engine = load_engine(
        str(tiny_model_dir), VOCAB, device="cpu", quantization="int8", int8_backend="c-kernel"
    )
    assert f"c-kernel ({abi.isa(kernels)}) linear layers" in engine.precision.reason
    modules = list(engine.model.modules())
    assert sum(isinstance(m, Int8Linear) for m in modules) == 2 * 4 + 1  # lm_head included
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert {p.dtype for p in engine.model.parameters()} == {torch.float32}
    assert len(generate(engine, PROMPT, 4, end_id=-1).ids) == 4


def test_int8_with_weight_only_layers(tiny_model_dir):
    """The GPU's int8 layers, here on the CPU: every linear layer replaced, reuse as a cold run."""
    from fim_lsp.engine.linear import WeightOnlyInt8Linear

    warm, cold = (
        load_engine(str(tiny_model_dir), VOCAB, "cpu", "int8", int8_backend="weight-only")
        for _ in range(2)
    )
    modules = list(warm.model.modules())
    assert sum(isinstance(m, WeightOnlyInt8Linear) for m in modules) == 2 * 4 + 1
    assert not any(type(m) is torch.nn.Linear for m in modules)
    generate(warm, PROMPT, 8, end_id=-1)
    typed = [*PROMPT[:-1], 13, 340, 50279]
    generation = generate(warm, typed, 8, end_id=-1)
    assert generation.cached_tokens == len(PROMPT) - 1
    assert generation.ids == generate(cold, typed, 8, cache_reuse=False).ids


def test_int8_engine_keeps_keys_and_values_in_fp16_and_reuse_matches_a_cold_run(
    kernels, tiny_model_dir
):
    warm, cold = (
        load_engine(str(tiny_model_dir), VOCAB, "cpu", "int8", int8_backend="c-kernel")
        for _ in range(2)
    )
    assert warm.step is not None, warm.step_problem
    generate(warm, PROMPT, 8, end_id=-1)
    assert {keys.dtype for keys in warm.cache.keys} == {torch.float16}
    typed = [*PROMPT[:-1], 13, 340, 50279]
    generation = generate(warm, typed, 8, end_id=-1)
    assert generation.cached_tokens == len(PROMPT) - 1
    assert generation.ids == generate(cold, typed, 8, cache_reuse=False).ids


@pytest.fixture
def fresh_choices(tmp_path, monkeypatch):
    """An empty cache folder: nothing remembered from earlier timings."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "fim-lsp" / "measured.json"


def test_cpu_int8_layers_are_chosen_by_measurement_and_remembered(fresh_choices, monkeypatch):
    from fim_lsp.engine import choices

    precision = choose("cpu", "int8")
    assert precision.int8 is not None and precision.int8.name in ("bitsandbytes", "c-kernel")
    assert "measured: " in precision.reason and "GOP/s" in precision.reason
    if precision.int8.name == "c-kernel":  # with the ISA its products run on
        assert re.search(r"8-bit c-kernel \((avx2|avx512vnni|amx)\)", precision.reason)
    assert fresh_choices.is_file()
    monkeypatch.setattr(choices, "int8_rates", lambda *args: pytest.fail("timed again"))
    again = choose("cpu", "int8")
    assert again.int8 == precision.int8 and "measured at an earlier start" in again.reason


def test_weight_only_is_timed_against_bitsandbytes():
    from fim_lsp.engine.choices import BITSANDBYTES, WEIGHT_ONLY, int8_rates

    rates = int8_rates([WEIGHT_ONLY, BITSANDBYTES], "cpu", torch.float32, tokens=2, width=64)
    assert set(rates) == {"weight-only", "bitsandbytes"} and min(rates.values()) > 0


def test_without_the_c_kernel_int8_runs_on_torch_dynamic_and_says_why(fresh_choices, monkeypatch):
    from fim_lsp.engine import choices

    monkeypatch.setitem(choices.PROBLEMS, "c-kernel", lambda device: "no C compiler (cc)")
    precision = choose("cpu", "int8")
    assert precision.int8 is not None
    assert precision.int8.name in ("bitsandbytes", "torch-dynamic")
    assert "no c-kernel: no C compiler (cc)" in precision.reason
    with pytest.raises(EngineError, match="no C compiler"):
        choose("cpu", "int8", "c-kernel")


def test_context_comes_from_the_config_except_where_it_is_known_wrong(tiny_model_dir):
    from fim_lsp.engine.loading import TRAINED_CONTEXT, read_shape

    engine = load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")
    assert engine.context_length == 1024  # as FIM-NeoX-1.3B's hub config says
    assert TRAINED_CONTEXT["CarperAI/FIM-NeoX-1.3B"] == 2048  # as its model card says
    assert read_shape(tiny_model_dir, trained_context=2048).positions == 2048


def test_precision_is_decided_from_explicit_settings():
    assert choose("cpu", "none").dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            choose("cuda", "int8")


def test_offline_hub_model_that_is_not_cached_says_how_to_fix_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EngineError, match="fim-lsp download"):
        resolve_model("CarperAI/FIM-NeoX-1.3B")


@pytest.mark.parametrize("name", ["./missing-folder", "/abs/missing", "not a model id", "a/b/c"])
def test_names_that_are_neither_folders_nor_hub_ids(name):
    with pytest.raises(EngineError, match="neither a folder nor a hub id"):
        resolve_model(name)


def test_a_folder_without_weights_is_a_clear_error(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(EngineError, match="cannot load the model"):
        load_engine(str(tmp_path), VOCAB, device="cpu", quantization="none")


def test_prompt_lookup_drafts_keep_exactly_the_greedy_tokens(tiny_model_dir):
    plain = load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")
    drafting = load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")
    # A prompt that repeats itself, so that the n-gram lookup finds drafts.
    repeated = [50277, *([1545, 4868, 9, 89, 13, 340, 10] * 6), 50278, 1545, 4868, 50279]
    expected = generate(plain, repeated, 40, draft_tokens=0).ids
    assert generate(drafting, repeated, 40, end_id=-1).ids == expected
    assert expected == reference_greedy(tiny_model_dir, repeated, 40)
    assert drafting.drafted > 0
    assert drafting.cache.ids == repeated + expected[:-1]  # rejected drafts left the cache


def test_int8_drafts_keep_exactly_the_greedy_tokens(kernels, tiny_model_dir):
    """The C kernel quantizes each token on its own, so a draft verified in one pass computes what
    one-token steps compute: drafting changes no token with int8 either. The tiny model's int8
    output repeats nothing for prompt lookup to find, so drafts come from an oracle that knows the
    greedy tokens and gets every third one wrong: both acceptance and rejection are exercised."""
    plain, drafting = (
        load_engine(str(tiny_model_dir), VOCAB, "cpu", "int8", int8_backend="c-kernel")
        for _ in range(2)
    )
    expected = generate(plain, PROMPT, 30, draft_tokens=0).ids

    def oracle(ids: list[int], limit: int) -> list[int]:
        done = len(ids) - len(PROMPT)
        draft = expected[done : done + min(limit, 4)]
        return [t if (done + i) % 3 else t + 1 for i, t in enumerate(draft)]

    drafting.draft = oracle
    assert generate(drafting, PROMPT, 30, end_id=-1).ids == expected
    assert 0 < drafting.accepted < drafting.drafted


def test_drafts_shrink_after_a_miss_and_grow_after_a_hit(engine, tiny_model_dir):
    greedy = reference_greedy(tiny_model_dir, PROMPT, 5)
    engine.cache.clear()
    engine.draft_length = 4
    with torch.inference_mode():
        engine.prefill(PROMPT, threading.Event())
        assert engine.verify(greedy[0], [999, 998], 8) == [greedy[1]]  # a miss
        assert engine.draft_length == 3
        assert engine.verify(greedy[1], greedy[2:4], 8) == greedy[2:5]  # a hit, and the next
    assert engine.draft_length == 5


def test_loading_maps_large_blocks_then_lets_the_heap_reuse_them(monkeypatch):
    from fim_lsp.engine import loading

    calls = []

    class GlibC:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))

    monkeypatch.setattr(loading.ctypes, "CDLL", lambda name: GlibC())
    with loading.freed_memory_returned():
        assert calls == [(loading.M_MMAP_THRESHOLD, 1 << 20)]
    assert calls[-1] == (loading.M_MMAP_THRESHOLD, 32 << 20)

    monkeypatch.setattr(loading.ctypes, "CDLL", lambda name: object())  # no mallopt: no-op
    with loading.freed_memory_returned():
        pass
    assert len(calls) == 2


def test_switching_between_two_prompts_keeps_both_warm(engine):
    """A file switch changes an SPM prompt from its first tokens: each prompt keeps its cache."""
    other = [50277, 600, 601, 602, 603, 604, 605, 50278, 606, 607, 50279]
    engine.store.clear()
    cold = [generate(engine, prompt, 4) for prompt in (PROMPT, other)]
    warm = [generate(engine, prompt, 4) for prompt in (PROMPT, other)]
    assert [g.cached_tokens for g in cold] == [0, 1]  # only <|SUF|> in common
    assert [g.cached_tokens for g in warm] == [len(PROMPT) - 1, len(other) - 1]
    assert [g.ids for g in warm] == [g.ids for g in cold]
    generate(engine, PROMPT, 4, cache_memory_mb=0)  # no room: only the prompt in use stays
    assert len(engine.store.caches) == 1


def test_warming_a_prompt_makes_its_request_warm_and_a_cancel_stops_it(engine):
    engine.store.clear()
    cancelled = threading.Event()
    cancelled.set()
    engine.warm(PROMPT, GenerationOptions(1, -1), cancelled)
    assert engine.cached_tokens(PROMPT) == 0
    engine.warm(PROMPT, GenerationOptions(1, -1), threading.Event())
    assert engine.cached_tokens(PROMPT) == len(PROMPT) - 1
    assert generate(engine, PROMPT, 2).cached_tokens == len(PROMPT) - 1


def test_the_prefill_rate_is_measured_once_per_machine(tiny_model_dir, fresh_choices, monkeypatch):
    first = load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")
    rate = first.prefill_ms_per_token()
    assert rate > 0 and first.cache.length == 0  # measured aside, not in the cache in use
    second = load_engine(str(tiny_model_dir), VOCAB, device="cpu", quantization="none")
    monkeypatch.setattr(second, "measure_prefill", lambda: pytest.fail("measured again"))
    assert second.prefill_ms_per_token() == rate


def test_a_rate_remembered_from_a_busier_start_gives_way_to_this_ones_prefills(
    engine, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine.prefill_rate, engine.rate_seen = 1000.0, False  # as read from an earlier start
    engine.store.clear()
    engine.cache, _ = engine.store.take(PROMPT * 10, 1 << 30)
    with torch.inference_mode():
        engine.prefill(PROMPT * 10, threading.Event(), chunk=64)  # 150 tokens, past RATE_TOKENS
    observed = engine.prefill_rate
    assert observed < 100.0 and engine.rate_seen  # replaced, not averaged with it
    # The next start reads what this one saw, without measuring again.
    engine.prefill_rate, engine.rate_seen = None, False
    monkeypatch.setattr(engine, "measure_prefill", lambda: pytest.fail("measured again"))
    assert engine.prefill_ms_per_token() == pytest.approx(observed)


def test_background_prefill_leaves_the_rate_to_requests(engine):
    engine.prefill_rate, engine.rate_seen = 5.0, True
    engine.store.clear()
    engine.warm(PROMPT * 10, GenerationOptions(1, -1), threading.Event())  # 150 tokens, in chunks
    assert engine.store.cached(PROMPT * 10) == 149  # all of it but the last, left to run
    assert engine.prefill_rate == 5.0
