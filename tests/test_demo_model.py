"""The shipped demo model infills: greedy answers that need the suffix, and are lost without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from fim_lsp.prompt import FimTokenizer, build_prompt

DEMO = Path(__file__).resolve().parent.parent / "fim_lsp" / "models" / "demo"
MAX_NEW_TOKENS = 12

pytestmark = pytest.mark.skipif(
    not (DEMO / "model.safetensors").exists(),
    reason="no demo weights in fim_lsp/models/demo (make them with training/train_demo.py)",
)

# (prefix, suffix, middle): each answer is written in the suffix or closes what the prefix opened,
# so a model that reads the suffix gets it and stops, and one that does not gets it wrong.
CASES = {
    "attr_from_suffix": (
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
        " = y\n",
        "y",
    ),
}


@pytest.fixture(scope="module")
def demo() -> tuple[FimTokenizer, AutoModelForCausalLM]:
    tokenizer = FimTokenizer(Tokenizer.from_file(str(DEMO / "tokenizer.json")))
    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32).eval()
    return tokenizer, model


def spm(demo, prefix: str, suffix: str) -> list[int]:
    tokenizer, model = demo
    budget = model.config.max_position_embeddings - MAX_NEW_TOKENS
    return build_prompt(tokenizer, prefix, suffix, budget).ids


@torch.no_grad()
def infill(demo, ids: list[int]) -> str | None:
    """The greedy middle, or None when the model does not end it within MAX_NEW_TOKENS."""
    tokenizer, model = demo
    prompt = torch.tensor([ids])
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=tokenizer.eot_id,
        pad_token_id=tokenizer.eot_id,
    )[0, len(ids) :].tolist()
    if tokenizer.eot_id not in out:
        return None
    return tokenizer.decode(out[: out.index(tokenizer.eot_id)])


def swap_sentinels(demo, ids: list[int]) -> list[int]:
    tokenizer, _ = demo
    swap = {tokenizer.suf_id: tokenizer.pre_id, tokenizer.pre_id: tokenizer.suf_id}
    return [swap.get(token, token) for token in ids]


def test_tokenizer_round_trips_and_has_the_sentinels(demo):
    tokenizer, _ = demo
    raw = tokenizer.tokenizer
    assert raw.token_to_id("<|endoftext|>") == 0
    assert raw.token_to_id("<|padding|>") == 1
    text = "class A:\n\tdef f(self):\n        return 'é'  # \u2603\r\n"
    assert raw.decode(raw.encode(text).ids) == text


@pytest.mark.parametrize("case", CASES)
def test_infills_from_prefix_and_suffix(demo, case):
    prefix, suffix, middle = CASES[case]
    assert infill(demo, spm(demo, prefix, suffix)) == middle


def test_swapped_sentinels_lose_most_answers(demo):
    right = [
        case
        for case, (prefix, suffix, middle) in CASES.items()
        if infill(demo, swap_sentinels(demo, spm(demo, prefix, suffix))) == middle
    ]
    assert len(right) <= len(CASES) // 4, right


def test_dropped_suffix_loses_most_answers(demo):
    right = [
        case
        for case, (prefix, _, middle) in CASES.items()
        if infill(demo, spm(demo, prefix, "")) == middle
    ]
    assert len(right) <= len(CASES) // 4, right
