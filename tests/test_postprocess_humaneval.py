"""Post-processing on HumanEval-infilling without a model: canonical middles plus typical run-ons.

Each problem's canonical middle, alone and followed by what models run on with (the suffix's next
lines; the suffix's first line, then code at the outer level; the last line looping; an
auto-closed bracket typed again; an editor's cursor on an empty indented line), is fed token by
token through the server's Finisher; the programs run with the suggestion and with the raw text.
Full-set numbers: `fim-lsp eval postprocess-check --subset multi-line --model demo --data
../shared/assets/human-eval-infilling`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fim_lsp.evaluate import SUBSETS, Problem, check_postprocessing, load_problems
from fim_lsp.prompt import FimTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "assets" / "human-eval-infilling"
SAMPLE = 150  # problems per subset: every n-th, so the test stays around a minute

# (subset, lowest pass rate with post-processing over all variants)
FLOORS = [("single-line", 0.99), ("multi-line", 0.99), ("random-span-light", 0.97)]
RUN_ONS = (
    "suffix run-on",
    "suffix line, then outer code",
    "looping last line",
    "auto-closed bracket",
    "editor cursor, run-on",
)


def every_nth(problems: list[Problem], count: int) -> list[Problem]:
    """A deterministic sample of about `count` problems spread over the whole list."""
    return problems[:: max(1, len(problems) // count)]


@pytest.mark.parametrize(("subset", "floor"), FLOORS)
def test_post_processing_keeps_programs_passing(
    subset: str, floor: float, demo_tokenizer: FimTokenizer
) -> None:
    if not DATA.is_dir():
        pytest.skip(f"needs {DATA} (the shared assets folder beside the repo)")
    problems = every_nth(load_problems(DATA, subset), SAMPLE)
    rates = check_postprocessing(problems, SUBSETS[subset][1], demo_tokenizer)
    # Correct output passes through untouched, at the benchmark's cursor and at an editor's...
    assert rates["canonical"]["on"] >= floor
    if "editor cursor" in rates:
        assert rates["editor cursor"]["on"] >= floor
    # ...and the run-ons are cut: every variant near the canonical rate, far above raw text.
    for variant in RUN_ONS:
        if variant in rates:
            assert rates[variant]["on"] >= floor, variant
            assert rates[variant]["off"] <= rates[variant]["on"] - 0.3, variant
    assert rates["all"]["on"] >= floor
    assert rates["all"]["off"] <= 0.75
