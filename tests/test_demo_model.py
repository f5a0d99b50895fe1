"""The shipped demo model: it loads with plain transformers, writes code, and (not yet) infills."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from fim_lsp.prompt import FimTokenizer, build_prompt

DEMO = Path(__file__).resolve().parent.parent / "fim_lsp" / "models" / "demo"
MAX_NEW_TOKENS = 12
HUMANEVAL_PROBLEMS = 100

pytestmark = pytest.mark.skipif(
    not (DEMO / "model.safetensors").exists(),
    reason="no demo weights in fim_lsp/models/demo (make them with training/train_demo.py)",
)

# (prefix, suffix, middle): the answer is written in the suffix, so a model that reads the suffix
# gets it and stops there, and one that does not gets it wrong. The shipped demo model does not
# yet: trained for 12.5M tokens in 75 CPU minutes it writes code-like text and reads the suffix a
# little (its loss, below) but does not end the middle where the suffix begins
# (training/README.md), so these are expected failures until a longer-trained model ships.
INFILLS = {
    "attribute_named_in_suffix": (
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
        " = y\n",
        "y",
    ),
    "counter_attribute": (
        "class Counter:\n    def __init__(self):\n        self.count = 0\n\n"
        "    def increment(self):\n        self.",
        " += 1\n        return self.count\n",
        "count",
    ),
    "closing_paren": (
        "import os\n\n\ndef full_path(root, name):\n    path = os.path.join(root, name",
        "\n    return path\n",
        ")",
    ),
    "return_of_suffix_variable": (
        "def total(items):\n    result = 0\n    for item in items:\n        result += item\n    ",
        " result\n",
        "return",
    ),
    "method_called_in_suffix": (
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
        "    def push(self, item):\n        self.items.",
        "(item)\n",
        "append",
    ),
}

# (prefix, suffix, first lines): what the demo model does get right today, greedy, in an SPM
# prompt: closing what the prefix opened. A random or broken model does not.
FIRST_LINES = {
    "paren": (*INFILLS["closing_paren"][:2], (")",)),
    "bracket": ("def first(items):\n    return items[0", "\n", ("]",)),
    "index_or_slice": ("def last(items):\n    return items[-1", "\n", ("]", ":]")),
    "def_colon": ("def f(x)", "\n    return x + 1\n", (":",)),
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
def greedy(demo, ids: list[int]) -> tuple[str, bool]:
    """The greedy continuation, and whether the model ended it within MAX_NEW_TOKENS."""
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
    ended = tokenizer.eot_id in out
    return tokenizer.decode(out[: out.index(tokenizer.eot_id)] if ended else out), ended


def infill(demo, ids: list[int]) -> str | None:
    """The greedy middle, or None when the model does not end it within MAX_NEW_TOKENS."""
    text, ended = greedy(demo, ids)
    return text if ended else None


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


def test_loads_as_a_small_gpt_neox(demo):
    _, model = demo
    config = model.config
    assert config.model_type == "gpt_neox"
    assert config.rope_parameters["partial_rotary_factor"] == 0.25  # as FIM-NeoX-1.3B
    assert config.eos_token_id == 0
    assert sum(p.numel() for p in model.parameters()) < 12_500_000  # ships in under 25 MB


@pytest.mark.parametrize("case", FIRST_LINES)
def test_closes_what_the_prefix_opened(demo, case):
    prefix, suffix, lines = FIRST_LINES[case]
    text, _ = greedy(demo, spm(demo, prefix, suffix))
    assert text.split("\n")[0] in lines


def test_closing_answers_are_lost_when_prefix_and_suffix_trade_sentinels(demo):
    """The prompt builder's likeliest bug: the suffix's text after <|PRE|>, the prefix's after
    <|SUF|>. The model then continues the wrong side."""
    right = [
        case
        for case, (prefix, suffix, lines) in FIRST_LINES.items()
        if greedy(demo, spm(demo, suffix, prefix))[0].split("\n")[0] in lines
    ]
    assert len(right) <= len(FIRST_LINES) // 4, right


@pytest.mark.xfail(reason="the demo model does not use the suffix yet (training/README.md)")
@pytest.mark.parametrize("case", INFILLS)
def test_infills_from_prefix_and_suffix(demo, case):
    prefix, suffix, middle = INFILLS[case]
    assert infill(demo, spm(demo, prefix, suffix)) == middle


@torch.no_grad()
def middle_loss(demo, ids: list[int], middle: str) -> float:
    """Nats per token of `middle` and <|endoftext|> right after the prompt `ids`."""
    tokenizer, model = demo
    target = [*tokenizer.encode(middle), tokenizer.eot_id]
    logits = model(input_ids=torch.tensor([ids + target])).logits[0, len(ids) - 1 : -1]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(target)).item()


@pytest.fixture(scope="module")
def humaneval_losses(demo) -> dict[str, list[float]]:
    """Loss of the true line of the first HumanEval single-line problems, per prompt variant."""
    import gzip
    import json

    from tests.tiny_model import SHARED

    data = SHARED / "assets" / "human-eval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
    if not data.is_file():
        pytest.skip(f"needs {data} (the shared assets folder beside the repo)")
    with gzip.open(data, "rt") as lines:
        rows = [json.loads(next(lines)) for _ in range(HUMANEVAL_PROBLEMS)]
    losses: dict[str, list[float]] = {"spm": [], "no suffix": [], "swapped": []}
    for row in rows:
        prompt = spm(demo, row["prompt"], row["suffix"])
        middle = row["canonical_solution"]
        losses["spm"].append(middle_loss(demo, prompt, middle))
        losses["no suffix"].append(middle_loss(demo, spm(demo, row["prompt"], ""), middle))
        losses["swapped"].append(middle_loss(demo, swap_sentinels(demo, prompt), middle))
    return losses


def gain(losses: dict[str, list[float]], other: str) -> tuple[float, int]:
    """How much lower the SPM prompt's loss is than `other`'s: on average, and how often."""
    spm, worse = losses["spm"], losses[other]
    lower = sum(a < b for a, b in zip(spm, worse, strict=True))
    return (sum(worse) - sum(spm)) / len(spm), lower


def test_the_suffix_lowers_the_loss_of_the_true_line(humaneval_losses):
    """Measured 0.13 nats per token lower, on 66 of the first 100 problems (training/README.md)."""
    mean, lower = gain(humaneval_losses, "no suffix")
    assert mean > 0.08 and lower > HUMANEVAL_PROBLEMS * 0.55, (mean, lower)


@pytest.mark.xfail(strict=True, reason="the demo model barely tells <|SUF|> from <|PRE|> yet")
def test_swapped_sentinels_raise_the_loss_of_the_true_line(humaneval_losses):
    mean, lower = gain(humaneval_losses, "swapped")
    assert mean > 0.08 and lower > HUMANEVAL_PROBLEMS * 0.55, (mean, lower)


def test_swapped_sentinels_lose_most_answers(demo):
    right = [
        case
        for case, (prefix, suffix, middle) in INFILLS.items()
        if infill(demo, swap_sentinels(demo, spm(demo, prefix, suffix))) == middle
    ]
    assert len(right) <= len(INFILLS) // 4, right


def test_dropped_suffix_loses_most_answers(demo):
    right = [
        case
        for case, (prefix, _, middle) in INFILLS.items()
        if infill(demo, spm(demo, prefix, "")) == middle
    ]
    assert len(right) <= len(INFILLS) // 4, right
