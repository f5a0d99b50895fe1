"""Post-processing: one table per rule, then `clean` and `stop_index` end to end, then the goldens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fim_lsp import postprocess as pp
from fim_lsp.documents import Cursor
from fim_lsp.gate import Mode, decide
from fim_lsp.postprocess import Suggestion, clean, context, stop_index

SINGLE, MULTI = Mode.SINGLE_LINE, Mode.MULTI_LINE
GOLDEN = Path(__file__).parent / "golden"


def at(text: str, language_id: str = "python") -> Cursor:
    """A cursor where `text` has its `|`."""
    prefix, suffix = text.split("|")
    return Cursor(prefix, suffix, language_id)


def ctx(text: str, mode: Mode = MULTI, language_id: str = "python") -> pp.Context:
    return context(at(text, language_id), mode)


# ---- context ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "language_id", "unit"),
    [
        (["def f():", "    return 1"], "python", "    "),
        (["function f() {", "  return 1;", "}"], "javascript", "  "),
        (["func f() {", "\treturn 1", "}"], "go", "\t"),
        # a docstring's deeper lines are not a step; two headers that disagree leave it unknown
        (["def f():", '    """x', "      y", '    """'], "python", "    "),
        (["def f():", "    if x:", "      y()"], "python", ""),
        (["x = 1"], "python", ""),
    ],
)
def test_indent_unit(lines: list[str], language_id: str, unit: str) -> None:
    assert pp.indent_unit(lines, pp.language_for(language_id)) == unit


@pytest.mark.parametrize(
    ("text", "language_id", "limits"),
    [
        ("def f():|", "python", (1, None)),  # the body is deeper; indented blocks have no closer
        ("    x = 1|", "python", (4, None)),
        ("def f():\n    |", "python", (4, None)),
        ("|", "python", (0, None)),
        ("function f() {|", "javascript", (1, 0)),
        ("function f() {\n  a();\n  |", "javascript", (2, 0)),
        ("x = foo(\n    |", "python", (4, 0)),  # the call's `)` may close it
    ],
)
def test_block_limits(text: str, language_id: str, limits: tuple[int, int | None]) -> None:
    found = ctx(text, language_id=language_id)
    assert (found.block_indent, found.closer_indent) == limits


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("def f():\n|", 4),
        ("def f():\n    x = 1\n|", 4),
        ("x = 1\n|", 0),
        ("|", 0),
    ],
)
def test_expected_indent(text: str, expected: int) -> None:
    assert ctx(text).expected_indent == expected


def test_line_start_means_column_zero_before_code() -> None:
    assert ctx("x\n|    y = 2").line_start
    assert not ctx("x\n|").line_start
    assert not ctx("x\n  |y").line_start


# ---- cutting rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cut"),
    [("abc", None), ("ab<|endoftext|>cd", 2), ("x<|SUF|>y<|MID|>", 1), ("<|PRE|>", 0)],
)
def test_control_token_cut(text: str, cut: int | None) -> None:
    assert pp.control_token_cut(text) == cut


@pytest.mark.parametrize(
    ("cursor", "mode", "text", "cut"),
    [
        ("x = |", SINGLE, "1\ny = 2", 1),
        ("x = |", SINGLE, "1", None),
        ("x = |", MULTI, "1\ny = 2", None),
        ("a\n|    b()", SINGLE, "    c()\n    b()", 8),  # at a line start the newline stays
    ],
)
def test_line_end_cut(cursor: str, mode: Mode, text: str, cut: int | None) -> None:
    assert pp.line_end_cut(text, ctx(cursor, mode)) == cut


GO = "if x |< limit:\n    go()\n"


@pytest.mark.parametrize(
    ("cursor", "mode", "text", "final", "cut"),
    [
        (GO, MULTI, "and y < limit:\n    go()\n", False, 6),
        (GO, MULTI, "and y < limit:\n    go()", True, 6),
        (GO, MULTI, "and y < limit:\n", False, None),  # wait for the next line
        (GO, MULTI, "and y < limit:", True, 6),  # ...unless the output ends there
        (GO, MULTI, "and y < limit:\n    stop()\n", False, None),  # its own line
        (GO, MULTI, "and y < limit:", False, None),  # the line may go on
        (GO, SINGLE, "and y < limit:\n", False, 6),
        (GO, SINGLE, "and y", True, None),
        ("if x |< limit:", MULTI, "and y < limit:\n", False, 6),  # nothing after it
        ("print(|, end='')", SINGLE, "x, end='')", True, 1),
        ("foo(|)", SINGLE, "a)", True, None),  # closers only: closing_overlap's job
        ("a\n|    b()", MULTI, "    b()\n", True, None),  # a line start: suffix_repeat_cut's job
    ],
)
def test_rest_of_line_cut(cursor: str, mode: Mode, text: str, final: bool, cut: int | None) -> None:
    assert pp.rest_of_line_cut(text, ctx(cursor, mode), final) == cut


SUFFIX = "def f(x):\n    |\n    y = x + 1\n    return y\n"


@pytest.mark.parametrize(
    ("cursor", "text", "final", "cut"),
    [
        (SUFFIX, "a = 2\n    y = x + 1\n    return y\n", False, 6),
        (SUFFIX, "a = 2\n    y = x + 1\n", False, None),  # one line: wait for the next
        (SUFFIX, "a = 2\n    y = x + 1", True, 6),  # ...unless the output ends there
        (SUFFIX, "a = 2\n    y = x + 1\n    y = y * 2\n", False, None),  # then diverges: code
        (SUFFIX, "a = 2\n\n    y = x + 1\n\n    return y\n", False, 7),  # blank lines skipped
        (SUFFIX, "y = x + 1\n    return y\n", False, 0),  # nothing new at all
        (SUFFIX, "a = 2\n        y = x + 1\n        return y\n", False, None),  # other indent
        ("f() {\n  |\n}\n", "a();\n}\n", False, 5),  # the whole suffix reproduced
        ("a\n|    b()\n    c()\n", "    x()\n    b()\n    c()\n", False, 8),  # line start
    ],
)
def test_suffix_repeat_cut(cursor: str, text: str, final: bool, cut: int | None) -> None:
    language_id = "javascript" if cursor.startswith("f()") else "python"
    assert pp.suffix_repeat_cut(text, ctx(cursor, language_id=language_id), final) == cut


@pytest.mark.parametrize(
    ("cursor", "language_id", "text", "cut"),
    [
        ("def f():|", "python", "\n    return 1\n\ndef g():\n", 15),
        ("def f():\n    |", "python", "a = 1\n    b = 2\nc = 3\n", 16),
        ("def f():\n    |", "python", "a = 1\n        b = 2\n", None),
        # the block's closing line is kept when the suffix does not close it already
        ("function f() {|", "javascript", "\n  return 1;\n}\nf();\n", 14),
        ("function f() {|\n}", "javascript", "\n  return 1;\n}\n", 13),
        ("if x then|", "lua", "\n  y()\nend\nz()\n", 10),
        ("x = foo(\n    |", "python", "a,\n    b,\n)\nnext()\n", 11),
        ("    x = 1|", "python", "\n    y = 2\nz = 3", 11),
    ],
)
def test_dedent_cut(cursor: str, language_id: str, text: str, cut: int | None) -> None:
    assert pp.dedent_cut(text, ctx(cursor, MULTI, language_id), True) == cut


def test_dedent_cut_only_in_multi_line_mode_and_waits_for_whole_lines() -> None:
    assert pp.dedent_cut("\n    a\nb", ctx("def f():|", SINGLE), True) is None
    assert pp.dedent_cut("\n    a\n}", ctx("f() {|", MULTI, "javascript"), False) is None


@pytest.mark.parametrize(
    ("language_id", "text", "cut"),
    [
        ("python", "def f():\n    pass\n\n\ndef g():", 20),
        ("python", "\ndef f():", None),  # the suggestion's own start is no stop
        ("python", "x = 1\nif __name__ == '__main__':", 6),
        ("go", "func a() {}\nfunc b() {}", 12),
        ("rust", "fn a() {}\n#[test]", 10),
        ("shellscript", "echo a\nfunction b {", None),
    ],
)
def test_stop_string_cut(language_id: str, text: str, cut: int | None) -> None:
    assert pp.stop_string_cut(text, ctx("|", MULTI, language_id)) == cut
    assert pp.stop_string_cut(text, ctx("|", SINGLE, language_id)) is None


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("a\na\na\n", 2),
        ("x = 1\na\na\na\nb", 8),
        ("a\nb\na\nb\na\nb\n", 4),  # a block of two lines
        ("a\na\nb\n", None),  # twice is not a loop
        ("\n\n\n\n", None),  # blank lines are trim_end's job
        ("a\na\na", None),  # the third copy is not finished
        ("}\n  }\n}\n", None),
    ],
)
def test_repeated_lines_cut(text: str, cut: int | None) -> None:
    assert pp.repeated_lines_cut(text) == cut


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("x = " + "foo(" * 20, 8),
        ("return " + "a, b, " * 10, 12),
        ("# " + "=" * 78, None),  # a ruler: one character again and again is no loop
        ("[" + "0, " * 7 + "0]", None),  # a short run of data
        ("    " * 30 + "x", None),  # whitespace is no token run
    ],
)
def test_repeated_tokens_cut(text: str, cut: int | None) -> None:
    assert pp.repeated_tokens_cut(text, final=True) == cut


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("x = " + "foo(" * 12, 8),  # 48 characters of copies: seen
        ("x = " + "foo(" * 11, None),  # not yet
        ("x = " + "foo(" * 12 + "fo", 8),  # ends mid-copy: a rotation of the unit
        ("x = " + "foo(" * 12 + "bar", None),  # the loop was left
        ("return " + "a, b, " * 8, 12),
        ("# " + "=" * 78, None),
        (" " * 100, None),
    ],
)
def test_repeated_tokens_cut_while_decoding(text: str, cut: int | None) -> None:
    assert pp.repeated_tokens_cut(text, final=False) == cut


# ---- reshaping rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cursor", "text", "expected"),
    [
        ("x = |", " 1", "1"),  # a space left of the cursor already
        ("x =|", " 1", " 1"),
        ("def f():\n    |", "    return 1", "return 1"),  # the model repeated the indentation
        ("def f():\n    |", " return 1", "return 1"),
        ("def f():\n  |", "  return 1", "  return 1"),  # two columns short: they stay
        ("def f():\n  |", "      return 1", "  return 1"),
        ("|", "    x", "    x"),  # nothing left of the cursor
    ],
)
def test_first_line_indent(cursor: str, text: str, expected: str) -> None:
    assert pp.first_line_indent(text, ctx(cursor)) == expected


TABS = "func f() {\n\tif x {\n\t\ty()\n\t}\n}\n"
TWO = "function f() {\n  if (x) {\n    y();\n  }\n}\n"


@pytest.mark.parametrize(
    ("cursor", "language_id", "text", "expected"),
    [
        # spaces from the model in a tab-indented file
        (
            TABS + "func g() {|",
            "go",
            "\n    a()\n    if b {\n        c()\n    }",
            "\n\ta()\n\tif b {\n\t\tc()\n\t}",
        ),
        # tabs from the model in a space-indented file
        (
            TWO + "function g() {|",
            "javascript",
            "\n\ta();\n\tif (b) {\n\t\tc();\n\t}",
            "\n  a();\n  if (b) {\n    c();\n  }",
        ),
        # a 4-space step in a 2-space file
        (
            TWO + "function g() {|",
            "javascript",
            "\n    a();\n    if (b) {\n        c();\n    }",
            "\n  a();\n  if (b) {\n    c();\n  }",
        ),
        # the same step: untouched
        (TWO + "function g() {|", "javascript", "\n  a();", "\n  a();"),
        # alignment off the step: untouched
        (TWO + "function g() {|", "javascript", "\n    a(1,\n      2);", "\n    a(1,\n      2);"),
        # ends in a header whose body is already in the document: untouched
        (
            "def f():\n    if x:\n        y()\n|        z()\n",
            "python",
            "  if a:\n      if b:\n",
            "  if a:\n      if b:\n",
        ),
    ],
)
def test_normalise_indentation(cursor: str, language_id: str, text: str, expected: str) -> None:
    assert pp.normalise_indentation(text, ctx(cursor, MULTI, language_id)) == expected


@pytest.mark.parametrize(
    ("cursor", "text", "expected"),
    [
        ("x = |", "1  \n\n", "1"),
        ("x = |\n", "\n    a\n\n   \n", "\n    a"),
        ("foo(|bar)", "x ", "x "),  # the space separates the suggestion from the code after it
        ("x = a |or b", "and c ", "and c "),
        ("x = a| or b", " and c ", " and c"),  # the code brings its own space
        ("if x:| return", "\n    ", "\n"),  # the code moves to a line of its own
        ("foo(|)", "a, b  \n", "a, b"),  # only closers right of the cursor
        ("a\n|    b()", "    c()\n\n", "    c()\n"),  # a line start: whole lines
        ("a\n|    b()", "    c()", "    c()\n"),
        ("a\n|    b()", "  \n", ""),
    ],
)
def test_trim_end(cursor: str, text: str, expected: str) -> None:
    assert pp.trim_end(text, ctx(cursor)) == expected


@pytest.mark.parametrize(
    ("cursor", "language_id", "text", "replaced"),
    [
        ("foo(|)", "python", "a, b)", 1),
        ("foo(|)", "python", "a, b", 0),
        ("foo(|)", "python", "bar(1)", 0),  # the suggestion's `)` closes its own `(`
        ("foo(|)", "python", "bar(1))", 1),
        ("foo(bar(|))", "python", "x)", 1),
        ("foo(bar(|))", "python", "x))", 2),
        ("def f(|):", "python", "x, y):", 2),
        ('print("|")', "python", 'hi")', 2),
        ('print("|")', "python", 'a (")', 2),  # brackets inside the string do not count
        ("if (x|) {", "javascript", " > 0) {", 0),  # code right of the closer: not this rule
        ("if (x|)", "javascript", " > 0) {", 1),
        ("x = foo(|);", "javascript", "1);", 2),
        ("x = foo(|);", "javascript", "1)", 1),
        ("x = |;", "javascript", "1;", 1),  # plain punctuation
        ("arr[|]", "javascript", "i]", 1),
        ("function f() {|}", "javascript", "\n  return 1;\n}", 1),
        ("foo(|)  ", "python", "a)", 1),  # trailing spaces right of the closers stay
        ("a\n|)", "python", "    x,\n", 0),  # a line start inserts whole lines
    ],
)
def test_closing_overlap(cursor: str, language_id: str, text: str, replaced: int) -> None:
    assert pp.closing_overlap(text, ctx(cursor, SINGLE, language_id)) == replaced


# ---- clean and stop_index ---------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", "<|endoftext|>", "\t\n"])
def test_clean_never_returns_blank(raw: str) -> None:
    assert clean(raw, at("x = |"), SINGLE) is None
    assert clean(raw, at("def f():\n    |"), MULTI) is None


def test_clean_returns_none_when_only_the_suffix_comes_back() -> None:
    assert clean("    return y\n", at("def f(y):\n|    return y\n"), MULTI) is None


def test_clean_gives_the_document_line_endings() -> None:
    cursor = Cursor("def f():\r\n    ", "\r\n    return x\r\n", "python")
    found = clean("x = 1\n    y = 2\n    return x\n    z\n", cursor, MULTI)
    assert found == Suggestion("x = 1\r\n    y = 2")


def test_clean_keeps_the_replace_range_on_crlf_lines() -> None:
    assert clean("a)", Cursor("foo(", ")\r\nx\r\n", "python"), SINGLE) == Suggestion("a)", 1)


STREAMED = [
    (
        at("def f(x):\n    |\n    y = x + 1\n    return y\n"),
        MULTI,
        "a = 2\n    y = x + 1\n    return y\n\ndef g():\n",
    ),
    (at("x = |\n"), SINGLE, "compute(1, 2)\nprint(x)\n"),
    (
        at("function f() {|", "javascript"),
        MULTI,
        "\n  return 1;\n}\n\nfunction g() {\n  return 2;\n}\n",
    ),
    (
        at("for x in xs:|\n"),
        MULTI,
        "\n    total += x\n    total += x\n    total += x\n    total += x\n",
    ),
    (at("if x |< limit:\n    go()\n"), MULTI, "and y < limit:\n    go()\n"),
    (at("x = |\n"), SINGLE, "call(" + "a, b, " * 20 + ")\n"),
    (at("def f():\n    |"), MULTI, "return g(" + "g(" * 40),
]


@pytest.mark.parametrize(("cursor", "mode", "raw"), STREAMED)
def test_stopping_early_gives_the_same_suggestion(cursor: Cursor, mode: Mode, raw: str) -> None:
    """Decode character by character, stop where stop_index says: clean gives what it gives on
    the whole output."""
    for end in range(1, len(raw) + 1):
        index = stop_index(raw[:end], cursor, mode)
        if index is not None:
            assert index <= end
            assert clean(raw[:index], cursor, mode) == clean(raw, cursor, mode)
            return
    pytest.fail("stop_index never stopped")


def test_stop_index_keeps_generating_while_nothing_is_decided() -> None:
    assert stop_index("total = sum(", at("x = 1\n|", "python"), SINGLE) is None
    assert stop_index("\n    a = 1\n    b", at("def f():|"), MULTI) is None


# ---- golden cases -----------------------------------------------------------------------------


def golden_cases() -> list[dict]:
    cases = []
    for path in sorted(GOLDEN.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            cases.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return cases


@pytest.mark.parametrize("case", golden_cases())
def test_golden(case: dict) -> None:
    """Hand-written editing situations: the gate's mode, then the cleaned suggestion."""
    cursor = Cursor(case["prefix"], case["suffix"], case["language"])
    mode = decide(cursor, case.get("multiline", "auto"))
    assert (mode.value if mode else None) == case["mode"]
    found = clean(case["raw"], cursor, mode) if mode else None
    expected = case["expected"]
    if expected is None:
        assert found is None
    else:
        assert found == Suggestion(expected, case.get("replace_chars", 0))
