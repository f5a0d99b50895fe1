"""The CPU step against the model's torch modules: the same greedy tokens, logits within rounding.

The step's layer norms and GELU run in C (the modules': torch's), so its numbers differ in the
last bits; everything else is the same arithmetic."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.backend import GenerationOptions
from fim_lsp.engine import load_engine
from fim_lsp.engine.cpu_step import check, load_kernel
from fim_lsp.engine.native import NativeError

VOCAB = 50280
PROMPT = [50277, 32488, 535, 50274, 18891, 426, 1269, 559, 340, 50278, 1545, 4868, 9, 89, 50279]


@pytest.fixture
def engine(tiny_model_dir):
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


@pytest.mark.parametrize("new", [[7], [7, 8, 9], list(range(100, 116))])
def test_step_gives_the_modules_logits_and_cache(engine, new):
    with torch.inference_mode():
        engine.forward(PROMPT)  # the prompt goes through the modules, as prefill does
        stepped, stepped_cache = engine.forward(new, keep=len(new)), cached(engine)
        engine.cache.drop(len(new))
        expected = through_modules(engine, new, keep=len(new))
    assert_close(stepped, expected)
    assert torch.equal(stepped.argmax(dim=-1), expected.argmax(dim=-1))
    for got, reference in zip(stepped_cache, cached(engine), strict=True):
        assert_close(got.float(), reference.float())


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
    engine.step = lambda cache, ids, keep: calls.append(len(ids)) or step(cache, ids, keep)
    options = GenerationOptions(20, end_id=-1)
    assert engine.generate(PROMPT, options).ids == plain.generate(PROMPT, options).ids
    assert calls and max(calls) <= 16  # decode steps and draft checks, not the prompt


@pytest.mark.parametrize(
    "setup, reason",
    [
        (dict(quantization="none"), "not the C int8 kernel's"),
        (dict(quantization="int8", int8_backend="torch-dynamic"), "not the C int8 kernel's"),
    ],
)
def test_other_setups_run_the_torch_modules_and_say_why(tiny_model_dir, setup, reason):
    engine = load_engine(str(tiny_model_dir), VOCAB, "cpu", **setup)
    assert engine.step is None and reason in engine.step_problem


def test_a_rotary_kernel_that_computes_wrong_is_refused():
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
