"""The gate: no suggestion mid-word; one line or a block depending on the cursor and settings."""

from __future__ import annotations

import pytest

from fim_lsp.documents import Cursor
from fim_lsp.gate import Mode, before_word, code_to_the_right, decide, line_around

SINGLE, MULTI = Mode.SINGLE_LINE, Mode.MULTI_LINE


def at(text: str, language_id: str = "python") -> Cursor:
    """A cursor where `text` has its `|`."""
    prefix, suffix = text.split("|")
    return Cursor(prefix, suffix, language_id)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\nx = fo|o\nb", ("x = fo", "o")),
        ("a\r\nx = |\r\nb", ("x = ", "")),
        ("|", ("", "")),
        ("first\n|  second", ("", "  second")),
    ],
)
def test_line_around(text: str, expected: tuple[str, str]) -> None:
    assert line_around(at(text)) == expected


@pytest.mark.parametrize(
    ("right", "expected"),
    [
        ("foo", True),
        ("_x", True),
        ("9", True),
        ("$el", True),
        ("", False),
        (" foo", False),
        (")", False),
    ],
)
def test_before_word(right: str, expected: bool) -> None:
    assert before_word(right) is expected


@pytest.mark.parametrize(
    ("right", "expected"),
    [
        ("", False),
        ("   ", False),
        (")", False),
        ('");', False),
        ("]:", False),
        (") + 1", True),
        ("x", True),
    ],
)
def test_code_to_the_right(right: str, expected: bool) -> None:
    assert code_to_the_right(right) is expected


@pytest.mark.parametrize(
    ("text", "language_id", "expected"),
    [
        # mid-word, or glued to an identifier: nothing
        ("x = compu|te()", "python", None),
        ("x = |value", "python", None),
        # code to the right: one line
        ("print(|, end='')", "python", SINGLE),
        ("if (|) {", "javascript", SINGLE),
        # only closers to the right: decided by the left
        ("foo(|)", "python", SINGLE),
        ("function f() {|}", "javascript", MULTI),
        # end of a line that opens a block: a block
        ("def f(x):|\n", "python", MULTI),
        ("def f(x):  # todo|", "python", MULTI),
        ("for i := range xs {|\n}", "go", MULTI),
        ("if x then|\nend", "lua", MULTI),
        # empty line (blank or indented): a block
        ("def f():\n    |\n", "python", MULTI),
        ("|", "", MULTI),
        # inside a string's interpolation, as bracket auto-closing leaves it: one line
        ("console.log(`Total: ${|}`);", "javascript", SINGLE),
        ('print(f"{total:|}")', "python", SINGLE),
        ('echo "${|}"', "shellscript", SINGLE),
        # end of an ordinary statement: one line
        ("x = 1|\n", "python", SINGLE),
        ("let x = |", "rust", SINGLE),
    ],
)
def test_decide_auto(text: str, language_id: str, expected: Mode | None) -> None:
    assert decide(at(text, language_id)) is expected


@pytest.mark.parametrize(
    ("text", "multiline", "requested", "expected"),
    [
        ("def f():|", "never", False, SINGLE),
        ("x = 1|", "always", False, MULTI),
        ("print(|x)", "always", False, None),  # mid-word stays off under every policy
        ("def f():|", "auto", True, SINGLE),
        ("x = 1|", "always", True, SINGLE),  # the client's request wins
    ],
)
def test_decide_policies(text: str, multiline: str, requested: bool, expected: Mode | None) -> None:
    assert decide(at(text), multiline, requested) is expected


def test_decide_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match="multiline"):
        decide(at("x|"), "sometimes")
