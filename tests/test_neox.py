"""Our GPT-NeoX against transformers' GPTNeoXForCausalLM: the same logits, bit for bit, in fp32."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import fim_lsp
from fim_lsp.engine.choices import choose
from fim_lsp.engine.kv_cache import KVCache
from fim_lsp.engine.loading import load_weights

PROMPTS = [
    [50277, 32488, 535, 50274, 18891, 426, 1269, 559, 340, 50278, 1545, 4868, 9, 89, 50279],
    [50277, 50278, 50279],
    [(37 * i) % 50000 + 2 for i in range(300)],
]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return reference, load_weights(tiny_model_dir, choose("cpu", "none"))


def new_cache(model) -> KVCache:
    shape = model.shape
    return KVCache(shape.layers, shape.heads, shape.head_dim, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("chunks", [[None], [5, None], [1, 1, 7, None]])
def test_logits_equal_transformers_in_every_cache_state(models, prompt, chunks):
    """A prefill in one piece or in chunks after cached tokens, then decode steps, then a drop
    of the last tokens and new ones: every logit the same as transformers' with its own cache."""
    reference, ours = models
    cache, theirs = new_cache(ours), DynamicCache()
    pieces, start = [], 0
    for size in chunks:
        end = len(prompt) if size is None else min(start + size, len(prompt) - 1)
        pieces.append(prompt[start:end])
        start = end
    pieces += [[7], [8], [9, 10, 11]]
    with torch.inference_mode():
        for piece in [piece for piece in pieces if piece]:
            got = ours(piece, cache, keep=len(piece))
            cache.ids.extend(piece)
            expected = reference(input_ids=torch.tensor([piece]), cache=theirs, use_cache=True)
            assert torch.equal(got, expected.logits[0])
        cache.drop(2)
        theirs.crop(-2)
        got = ours([12, 13], cache, keep=2)
        expected = reference(input_ids=torch.tensor([[12, 13]]), cache=theirs, use_cache=True)
        assert torch.equal(got, expected.logits[0])


def test_the_engine_imports_no_transformers_internals_and_registers_nothing():
    """transformers is read for the config only (loading.read_shape), never imported with the
    engine, so nothing of ours can be registered into it at import."""
    code = "import sys, fim_lsp.engine, fim_lsp.server; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    package = Path(fim_lsp.__file__).parent  # the checkout's, or the installed wheel's
    for file in package.rglob("*.py"):
        text = file.read_text()
        assert "from transformers." not in text and "import transformers." not in text, file
