"""Post-processing on HumanEval-infilling without a model: canonical middles plus typical run-ons.

Each problem's canonical middle is fed to `clean` alone and followed by what models run on with
(the suffix's next lines, the last line looping, an auto-closed bracket typed again); the
programs run with the cleaned text and with the raw text. Full-set numbers:
`fim-lsp eval postprocess-check --data ../shared/assets/human-eval-infilling --subset multi-line`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fim_lsp.evaluate import SUBSETS, Problem, check_postprocessing, load_problems

DATA = Path(__file__).resolve().parents[2] / "shared" / "assets" / "human-eval-infilling"
SAMPLE = 300  # problems per subset: every n-th, so the test stays well under a minute

# (subset, lowest pass rate with post-processing over all variants)
FLOORS = [("single-line", 0.99), ("multi-line", 0.98)]


def every_nth(problems: list[Problem], count: int) -> list[Problem]:
    """A deterministic sample of about `count` problems spread over the whole list."""
    return problems[:: max(1, len(problems) // count)]


@pytest.mark.parametrize(("subset", "floor"), FLOORS)
def test_post_processing_keeps_programs_passing(subset: str, floor: float) -> None:
    if not DATA.is_dir():
        pytest.skip(f"needs {DATA} (the shared assets folder beside the repo)")
    problems = every_nth(load_problems(DATA, subset), SAMPLE)
    rates = check_postprocessing(problems, SUBSETS[subset][1])
    # Correct output passes through untouched...
    assert rates["canonical"]["on"] >= floor
    # ...and the run-ons are cut: every variant near the canonical rate, far above raw text.
    for variant in ("suffix run-on", "looping last line", "auto-closed bracket"):
        assert rates[variant]["on"] >= floor, variant
        assert rates[variant]["off"] <= rates[variant]["on"] - 0.3, variant
    assert rates["all"]["on"] >= floor
    assert rates["all"]["off"] <= 0.75
