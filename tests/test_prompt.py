"""The FIM prompt: the model card's ids, sentinels that user text cannot forge, budget and stable cuts."""

from __future__ import annotations

import json

import pytest

from fim_lsp.prompt import LINES_PER_CHUNK, FimTokenizer, TokenizerError, build_prompt
from tests import tiny_model

CARD = tiny_model.SHARED / "assets" / "fim-neox-1.3b" / "model_card_test_vectors.json"


def test_model_card_example_gives_exactly_the_card_ids(fim_tokenizer):
    card = json.loads(CARD.read_text())
    prompt = build_prompt(fim_tokenizer, card["prefix"], card["suffix"], budget=2048)
    assert prompt.ids == card["model_input_ids (SPM: SUF s PRE p MID)"]
    assert fim_tokenizer.decode(prompt.ids) == card["decode(model_input_ids)"]


def test_sentinel_ids_are_looked_up_by_name(fim_tokenizer):
    assert (fim_tokenizer.suf_id, fim_tokenizer.pre_id, fim_tokenizer.mid_id) == (
        50277,
        50278,
        50279,
    )
    assert fim_tokenizer.eot_id == 0


@pytest.mark.parametrize(
    "literal", ["<|SUF|>", "<|PRE|>", "<|MID|>", "<|endoftext|>", "<|padding|>"]
)
def test_control_tokens_written_in_user_code_stay_plain_text(fim_tokenizer, literal):
    text = f"marker = '{literal}'\n"
    ids = fim_tokenizer.encode(text)
    assert not {0, 1, 50277, 50278, 50279} & set(ids)
    assert fim_tokenizer.decode(ids) == text
    prompt = build_prompt(fim_tokenizer, text, text, budget=256)
    assert prompt.ids.count(fim_tokenizer.suf_id) == 1
    assert prompt.ids.count(fim_tokenizer.mid_id) == 1


def test_whitespace_run_tokens_are_kept(fim_tokenizer):
    assert fim_tokenizer.encode("    return") == [50274, 2309]  # four spaces: an added token


def test_a_tokenizer_without_sentinels_is_refused():
    from tokenizers import Tokenizer

    tiny_model.TOKENIZER_20B.is_file() or pytest.skip("needs the shared tokenizer")
    with pytest.raises(TokenizerError, match="<\\|SUF\\|>"):
        FimTokenizer(Tokenizer.from_file(str(tiny_model.TOKENIZER_20B)))


def numbered_lines(count: int, start: int = 0) -> str:
    return "".join(f"value_{n} = compute({n}, 'text')\n" for n in range(start, start + count))


@pytest.mark.parametrize("budget", [64, 300, 1000])
def test_budget_is_respected_and_sentinels_survive(fim_tokenizer, budget):
    prefix, suffix = numbered_lines(500), numbered_lines(500, 1000)
    prompt = build_prompt(fim_tokenizer, prefix, suffix, budget)
    assert len(prompt.ids) <= budget
    assert prompt.ids[0] == fim_tokenizer.suf_id and prompt.ids[-1] == fim_tokenizer.mid_id
    assert prompt.ids.count(fim_tokenizer.pre_id) == 1


def test_prefix_is_cut_from_the_top_and_suffix_from_the_bottom_on_line_boundaries(fim_tokenizer):
    prefix, suffix = numbered_lines(400), numbered_lines(400, 1000)
    prompt = build_prompt(fim_tokenizer, prefix, suffix, 1000)
    text = fim_tokenizer.decode(prompt.ids)
    kept_suffix = text[len("<|SUF|>") : text.index("<|PRE|>")]
    kept_prefix = text[text.index("<|PRE|>") + len("<|PRE|>") : -len("<|MID|>")]
    assert prefix.endswith(kept_prefix) and kept_prefix.startswith("value_")
    assert suffix.startswith(kept_suffix) and kept_suffix.endswith("\n")
    assert prompt.prefix_cut == len(prefix) - len(kept_prefix) > 0
    assert prompt.suffix_cut == len(suffix) - len(kept_suffix) > 0


def test_short_texts_are_kept_whole(fim_tokenizer):
    prompt = build_prompt(fim_tokenizer, "def f(x):\n    return ", "\n\nprint(f(2))\n", 2048)
    assert (prompt.prefix_cut, prompt.suffix_cut) == (0, 0)


def test_one_enormous_line_is_cut_by_tokens(fim_tokenizer):
    line = "x = [" + ", ".join(str(n) for n in range(5000))
    prompt = build_prompt(fim_tokenizer, line, line + "]\n", 200)
    assert len(prompt.ids) <= 200
    assert fim_tokenizer.decode(prompt.ids).endswith("4999<|MID|>")


def test_typing_at_the_cursor_in_a_long_file_keeps_the_prompt_prefix_stable(fim_tokenizer):
    """Typing 50 characters must not move the cuts: each prompt extends the one before."""
    prefix, suffix = numbered_lines(600), "\n" + numbered_lines(600, 1000)
    typed = "result = combine(value_1, value_2) + value_3 * 2.0"
    previous = build_prompt(fim_tokenizer, prefix, suffix, 1500).ids
    reused = []
    for count in range(1, len(typed) + 1):
        ids = build_prompt(fim_tokenizer, prefix + typed[:count], suffix, 1500).ids
        common = next(
            (i for i, (a, b) in enumerate(zip(previous, ids, strict=False)) if a != b),
            len(previous),
        )
        reused.append(common / len(ids))
        previous = ids
    assert min(reused) > 0.95, f"a keystroke re-prefilled {1 - min(reused):.0%} of the prompt"
    # The window does move eventually, but in chunks of whole lines, not per keystroke.
    assert LINES_PER_CHUNK > 1
