"""The CPU step against the model's torch modules: the same greedy tokens, logits within rounding; a
chunk against its tokens one at a time, and one ISA against the other: bit for bit.

The step's layer norms and GELU run in C (the modules': torch's), so its numbers differ in the
last bits; everything else is the same arithmetic."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fim_lsp.backend import GenerationOptions
from fim_lsp.engine import abi, load_engine
from fim_lsp.engine.cpu_step import check, load_kernel
from fim_lsp.engine.native import NativeError
from fim_lsp.engine.neox import Cancelled
from tests.fakes import SetAfter

VOCAB = 50280
PROMPT = [50277, 32488, 535, 50274, 18891, 426, 1269, 559, 340, 50278, 1545, 4868, 9, 89, 50279]


@pytest.fixture
def engine(kernels, tiny_model_dir):
    engine = load_engine(str(tiny_model_dir), VOCAB, "cpu", "int8", int8_backend="c-kernel")
    assert engine.step is not None, engine.step_problem
    return engine


def through_modules(engine, ids: list[int], keep: int) -> torch.Tensor:
    step, engine.step = engine.step, None
    try:
        return engine.forward(ids, keep)
    finally:
        engine.step = step


def cached(engine) -> list[torch.Tensor]:
    length = engine.cache.length
    return [
        torch.cat([keys[:, :length], values[:, :length]])
        for keys, values in zip(engine.cache.keys, engine.cache.values, strict=True)
    ]


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def assert_cache_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """fp16 caches: values that differ in their last fp32 bits may round one fp16 step apart."""
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(
            a.float(), b.float(), rtol=2**-10, atol=1e-5 * b.abs().max().item()
        )


@pytest.mark.parametrize("new", [[7], [7, 8, 9], list(range(100, 116)), list(range(200, 260))])
def test_step_gives_the_modules_logits_and_cache(engine, new):
    with torch.inference_mode():
        through_modules(engine, PROMPT, keep=1)
        stepped, stepped_cache = engine.forward(new, keep=len(new)), cached(engine)
        engine.cache.drop(len(new))
        expected = through_modules(engine, new, keep=len(new))
    assert_close(stepped, expected)
    assert torch.equal(stepped.argmax(dim=-1), expected.argmax(dim=-1))
    assert_cache_close(stepped_cache, cached(engine))


def test_a_cold_prompt_through_the_step_gives_the_modules_logits_and_cache(engine):
    with torch.inference_mode():
        stepped, stepped_cache = engine.forward(PROMPT, keep=len(PROMPT)), cached(engine)
        engine.cache.clear()
        expected = through_modules(engine, PROMPT, keep=len(PROMPT))
    assert_close(stepped, expected)
    assert torch.equal(stepped.argmax(dim=-1), expected.argmax(dim=-1))
    assert_cache_close(stepped_cache, cached(engine))


@pytest.mark.parametrize("past", [0, 5])
def test_a_chunk_gives_the_logits_and_cache_of_its_tokens_one_at_a_time(engine, isa, past):
    """Bit for bit: every token's arithmetic is its own, in every kernel."""
    ids = [*PROMPT, *range(300, 340)]  # 55 tokens: several attention blocks and tiles
    with torch.inference_mode():
        if past:
            engine.forward(ids[:past])
        chunk, chunk_cache = engine.forward(ids[past:], keep=len(ids) - past), cached(engine)
        engine.cache.clear()
        if past:
            engine.forward(ids[:past])
        alone = torch.cat([engine.forward([token]) for token in ids[past:]])
    assert torch.equal(chunk, alone)
    for got, expected in zip(chunk_cache, cached(engine), strict=True):
        assert torch.equal(got, expected)


def test_a_cancel_between_layers_leaves_the_cache_as_it_was(engine):
    with torch.inference_mode():
        engine.forward(PROMPT[:8])
        with pytest.raises(Cancelled):
            engine.forward(PROMPT[8:], cancel=SetAfter(1))  # after the first layer
        assert engine.cache.ids == PROMPT[:8]
        resumed = engine.forward(PROMPT[8:])
        engine.cache.clear()
        assert torch.equal(resumed, engine.forward(PROMPT)[-1:])


def test_every_isa_gives_the_same_logits(engine):
    here = []
    for name in abi.ISAS:
        with contextlib.suppress(NativeError), abi.running_on(engine.step.library, name):
            engine.cache.clear()
            with torch.inference_mode():
                here.append(engine.forward(PROMPT, keep=len(PROMPT)))
    if len(here) < 2:
        pytest.skip("this CPU runs the int8 products on one ISA only: nothing to compare")
    assert all(torch.equal(logits, here[0]) for logits in here[1:])


def test_the_step_follows_weights_that_move(engine):
    """The step reads the weights through pointers set up once: moving the model's buffers
    (here into shared memory) must not leave it reading freed memory."""
    with torch.inference_mode():
        engine.forward(PROMPT)
        before = engine.forward([7])
        engine.cache.drop(1)
        engine.model.share_memory()
        assert torch.equal(engine.forward([7]), before)


def test_steps_past_the_cache_buffers_capacity_stay_the_same(engine, tiny_model_dir):
    """Three hundred steps grow the cache's buffers (256 tokens at first) while the step writes
    into them; an engine without the step gives the same last logits."""
    plain = load_engine(str(tiny_model_dir), VOCAB, "cpu", "int8", int8_backend="c-kernel")
    plain.step = None
    tokens = [(31 * i) % 50000 + 2 for i in range(300)]
    with torch.inference_mode():
        for model in (engine, plain):
            model.forward(PROMPT)
            for token in tokens:
                logits = model.forward([token])
            model.last = logits
    assert len(engine.cache.ids) == len(PROMPT) + 300
    assert_close(engine.last, plain.last)


def test_generation_uses_the_step_and_keeps_the_greedy_tokens(engine, tiny_model_dir):
    plain = load_engine(str(tiny_model_dir), VOCAB, "cpu", "int8", int8_backend="c-kernel")
    plain.step = None
    calls = []
    step = engine.step
    engine.step = lambda cache, ids, *rest: calls.append(len(ids)) or step(cache, ids, *rest)
    options = GenerationOptions(20, end_id=-1)
    assert engine.generate(PROMPT, options).ids == plain.generate(PROMPT, options).ids
    assert calls[0] == len(PROMPT)  # the prompt, cold
    assert calls[1:] and max(calls[1:]) <= 9  # decode steps and draft checks


@pytest.mark.parametrize(
    "setup, reason",
    [
        (dict(quantization="none"), "not the C int8 kernel's"),
        (dict(quantization="int8", int8_backend="torch-dynamic"), "not the C int8 kernel's"),
    ],
)
def test_other_setups_run_the_torch_modules_and_say_why(kernels, tiny_model_dir, setup, reason):
    engine = load_engine(str(tiny_model_dir), VOCAB, "cpu", **setup)
    assert engine.step is None and reason in engine.step_problem


def test_a_rotary_kernel_that_computes_wrong_is_refused(kernels):
    class Library:
        fim_rope_store = staticmethod(lambda *args: 0)  # writes nothing

    load_kernel()  # the real one passes
    with pytest.raises(NativeError, match="rotary embedding kernel"):
        check(Library())


def test_heads_the_attention_kernel_does_not_take_are_left_to_the_modules(engine, monkeypatch):
    import dataclasses

    from fim_lsp.engine.cpu_step import CpuStep

    monkeypatch.setattr(engine.model, "shape", dataclasses.replace(engine.model.shape, width=48))
    assert "heads of 12 dims" in CpuStep.problem(engine.model, engine.precision)
