"""Post-processing: the Finisher fed token by token as the server feeds it, one table per rule,
then the golden cases."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fim_lsp import postprocess as pp
from fim_lsp.documents import Cursor
from fim_lsp.gate import Mode, decide
from fim_lsp.postprocess import Finisher, Suggestion, context
from fim_lsp.prompt import FimTokenizer

SINGLE, MULTI = Mode.SINGLE_LINE, Mode.MULTI_LINE
GOLDEN = Path(__file__).parent / "golden"


def at(text: str, language_id: str = "python") -> Cursor:
    """A cursor where `text` has its `|`."""
    prefix, suffix = text.split("|")
    return Cursor(prefix, suffix, language_id)


def ctx(text: str, mode: Mode = MULTI, language_id: str = "python") -> pp.Context:
    return context(at(text, language_id), mode)


@pytest.fixture(params=["demo", "gpt-neox-20b"])
def tokenizer(request: pytest.FixtureRequest, demo_tokenizer: FimTokenizer) -> FimTokenizer:
    """Each tokenizer the server may run with: the demo model's and FIM-NeoX-1.3B's."""
    if request.param == "demo":
        return demo_tokenizer
    tokenizer: FimTokenizer = request.getfixturevalue("fim_tokenizer")
    return tokenizer


def by_characters(text: str) -> tuple[list[int], Callable[[list[int]], str]]:
    """Ids for `text` one character each, and their decode: for tests where tokens do not matter."""
    return [ord(char) for char in text], lambda ids: "".join(map(chr, ids))


def feed(finisher: Finisher, ids: list[int]) -> tuple[Suggestion | None, int | None]:
    """As the server's engine does: one token at a time, asking the finisher after each. The
    suggestion, and how many tokens were generated when the finisher said stop (None: never)."""
    generated: list[int] = []
    for token in ids:
        generated.append(token)
        if finisher.should_stop(generated):
            return finisher.suggestion(generated), len(generated)
    return finisher.suggestion(generated), None


def finish(cursor: Cursor, mode: Mode, raw: str) -> Suggestion | None:
    ids, decode = by_characters(raw)
    return feed(Finisher(decode, cursor, mode), ids)[0]


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
    ("lines", "chars"),
    [
        (["func f() {", "\treturn 1", "}"], "\t"),
        (["def f():", "    return 1"], " "),
        (["x = 1", "y = 2"], ""),  # nothing indented: no evidence
        (["def f():", "\tx", "    y", "    z"], " "),  # the most lines win
    ],
)
def test_indent_chars(lines: list[str], chars: str) -> None:
    assert pp.indent_chars(lines) == chars


@pytest.mark.parametrize(
    ("text", "language_id", "block", "header"),
    [
        ("def f():|", "python", 1, "def f():"),  # the body is deeper
        ("    x = 1|", "python", 4, None),
        ("def f():\n    |", "python", 4, "def f():"),
        ("|", "python", 0, None),
        ("function f() {|", "javascript", 1, "function f() {"),
        ("function f() {\n  a();\n  |", "javascript", 2, "function f() {"),
        ("x = foo(\n    |", "python", 4, "x = foo("),
    ],
)
def test_the_cursors_block(text: str, language_id: str, block: int, header: str | None) -> None:
    found = ctx(text, language_id=language_id)
    assert found.block_indent == block
    assert pp.block_header(block, found) == header


@pytest.mark.parametrize(
    ("language_id", "line", "closable"),
    [
        ("javascript", "function f() {", True),
        ("lua", "if x then", True),  # `end` closes it
        ("python", "def f():", False),  # indented blocks have no closing line
        ("python", "x = foo(", True),  # ...but a bracket left open has
    ],
)
def test_closable(language_id: str, line: str, closable: bool) -> None:
    assert pp.closable(line, pp.language_for(language_id)) is closable


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
LOOP = "while True:\n    while i < n:\n        |\n        i += 1\n"


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
        ("f() {\n  |\n}\n", "a();\n}\n", False, None),  # one line: wait for more
        ("f() {\n  |\n}\n", "a();\n}", True, 5),  # ...the output ends with the whole suffix
        # a middle that begins with the suffix's only line goes on with its own code
        (LOOP, "i += 1\n        if i > 3:\n            break", True, None),
        (LOOP, "i += 1\n        i += 1\n", True, 7),
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
        # a clause at the header's level goes on with the block's statement
        ("if x:\n    |", "python", "a()\nelse:\n    b()\nc()\n", 18),
        ("if (x) {\n  |\n}", "javascript", "a();\n} else {\n  b();\n}\n", 21),
        # ...after code too: the `} else {` line is no block of its own
        (
            "function f(x) {\n  if (x < 0) {\n    return -1;|\n  }\n}",
            "javascript",
            "\n  } else {\n    return 1;\n  }\n}\n",
            26,
        ),
        # column 0 of an empty line: the first line shows the block
        ("def f():\n    x = 1\n|\n", "python", "    y = 2\nprint(y)\n", 10),
    ],
)
def test_dedent_cut(cursor: str, language_id: str, text: str, cut: int | None) -> None:
    assert pp.dedent_cut(text, ctx(cursor, MULTI, language_id), True) == cut


def test_dedent_cut_only_in_multi_line_mode_and_waits_for_whole_lines() -> None:
    assert pp.dedent_cut("\n    a\nb", ctx("def f():|", SINGLE), True) is None
    assert pp.dedent_cut("\n    a\n}", ctx("f() {|", MULTI, "javascript"), False) is None


@pytest.mark.parametrize(
    ("cursor", "text", "block"),
    [
        # after code: the cursor's block, or further out as the first line goes (after a
        # `return`), but a line at the outer level leaves
        ("def f():\n    x = 1|", "\n        y = 2", 4),
        ("def f():\n    if x:\n        return 1|", "\n    y = 2", 4),
        ("def f():\n    x = 1|", "\nz()", 1),
        ("x = 1|", "\ny = 2", 0),
        ("def f():\n    |", "\nz()", 4),  # the editor indented the cursor: there
        # column 0: once the first line is indented, only the outer level leaves
        ("def f():\n    x = 1\n|", "    y = 2\nz()", 1),
        ("def f():\n    if x:\n        y()\n|", "    z = 1\n", 1),
        ("def f():\n|    return x", "        y = 1\n", 1),
        ("x = 1\n|", "y = 2\n", 0),  # top-level code
    ],
)
def test_block_indent(cursor: str, text: str, block: int) -> None:
    assert pp.block_indent(text, ctx(cursor)) == block


@pytest.mark.parametrize(
    ("text", "overtime", "cut"),
    [
        ("ab\ncd\n", None, None),  # in time
        ("ab\ncd\n", 0, 2),  # late from the start: the first line ends it
        ("ab\ncd\n", 3, 5),  # late during the second line
        ("ab", 0, None),  # the line is not finished yet
        ("f(a,\n  b)\nc\n", 0, 9),  # a line ends where its brackets close
    ],
)
def test_time_budget_cut(text: str, overtime: int | None, cut: int | None) -> None:
    assert pp.time_budget_cut(text, ctx("|"), overtime) == cut


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
    ("cursor", "text", "cut"),
    [
        ("|", "a\na\na\n", 2),
        ("|", "x = 1\na\na\na\nb", 8),
        ("|", "a\nb\na\nb\na\nb\n", 4),  # a block of two lines
        ("|", "a\na\nb\n", None),  # twice is not a loop
        ("|", "\n\n\n\n", None),  # blank lines are trim_end's job
        ("|", "a\na\na", None),  # the third copy is not finished
        ("|", "}\n  }\n}\n", None),
        # on an indented empty line, the first line has the cursor's indentation
        ("def f():\n    |", "x()\n    x()\n    x()\n    x()\n    x()\n", 4),
        ("def f():\n    |", "x()\n    x()\n    y()\n", None),  # twice
        ("def f():\n  |", "  x()\n  x()\n  x()\n", 6),  # ...or the model's part alone
        # after code: the whole line, or the model's part of it, starts the loop
        ("x = |", "1\nx = 1\nx = 1\nx = 1\n", 2),
        ("x = |", "1\n1\n1\n", 2),
    ],
)
def test_repeated_lines_cut(cursor: str, text: str, cut: int | None) -> None:
    assert pp.repeated_lines_cut(text, ctx(cursor)) == cut


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
        # a 2-space step in a 4-space file, the suffix's line level with the first line
        (
            "class A:\n    def f(self):\n        return 1\n\n    def g(self, x):\n|        return x\n",
            "python",
            "        if x:\n          x = 2\n",
            "        if x:\n            x = 2\n",
        ),
        # ...but not when a line would move to the other side of the suffix's next line:
        # `i += 1` stays in the `while` body
        (
            "def f(arr):\n    if arr:\n        pass\n    x = 1\n\n|      i += 1\n    return ind\n",
            "python",
            "    i = 1\n    while i < len(arr):\n      if arr[i] < arr[i - 1]:\n        ind = i\n",
            None,
        ),
        # nothing indented in the file yet: the language's convention, or the model's own
        ("package main\n\nfunc main() {|", "go", "\n\tf()\n\tif x {\n\t\ty()\n\t}", None),
        ("package main\n\nfunc main() {|", "go", "\n    f()\n    if x {", "\n\tf()\n\tif x {"),
        ("function f() {|", "javascript", "\n\ta();\n\tif (b) {", None),
        ("function f() {|", "javascript", "\n   a();", None),
        ("def f():|", "python", "\n\tif x:\n\t\treturn 1", "\n    if x:\n        return 1"),
    ],
)
def test_normalise_indentation(
    cursor: str, language_id: str, text: str, expected: str | None
) -> None:
    """`expected` None: the text stays as it is."""
    found = pp.normalise_indentation(text, ctx(cursor, MULTI, language_id))
    assert found == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("cursor", "text", "expected"),
    [
        ("def f():\n    |", "a = 1\n    \n    b = 2", "a = 1\n\n    b = 2"),
        ("def f():\n    |", "a = 1\n\t\n    b = 2\n  \n    c", "a = 1\n\n    b = 2\n\n    c"),
        # the cursor's line, and the indentation of code right of the cursor, stay
        ("def f():\n    |", "    \n    b = 2\n    ", None),
        # a file that keeps its blank lines indented keeps the suggestion's too
        ("def f():\n    x = 1\n    \n    y = 2\n    |", "a\n    \n    b", None),
    ],
)
def test_empty_blank_lines(cursor: str, text: str, expected: str | None) -> None:
    assert pp.empty_blank_lines(text, ctx(cursor)) == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("cursor", "text", "expected"),
    [
        ("x = |", "decode(s, 'ascii', ", ""),  # on the cursor's line: nothing
        ("def f():\n    |", "x = 1\n    y = g(h(", "x = 1"),
        ("def f():\n    |", "x = 1\n    y = 'abc", "x = 1"),  # an open string too
        ("x = |", "a, b,", "a, b,"),  # nothing left open
        ("x = foo(|", "a, b, ", "a, b, "),  # open before the cursor: not the suggestion's
    ],
)
def test_drop_unfinished_line(cursor: str, text: str, expected: str) -> None:
    assert pp.drop_unfinished_line(text, ctx(cursor)) == expected


DEEPER = "def f():\n    |\n        y = 1\n"


@pytest.mark.parametrize(
    ("cursor", "language_id", "text", "leaves"),
    [
        (DEEPER, "python", "x = 1", False),  # `y` would be indented under nothing
        (DEEPER, "python", "if x:", True),
        (DEEPER, "python", "x = foo(", True),  # a continuation line
        ("def f():\n    |\n    y = 1\n", "python", "x = 1", True),
        ("def f():\n    |", "python", "x = 1", True),  # no code after the cursor
        ("if x:\n    |\n        y = 1\n", "javascript", "x = 1;", True),  # braces make blocks
        ("def f():\n    if x|:\n        y = 1\n", "python", " > 0", True),  # the `:` is there
        ("def f():\n|        y = 1\n", "python", "    x = 1\n", False),
    ],
)
def test_leaves_suffix_indented(cursor: str, language_id: str, text: str, leaves: bool) -> None:
    assert pp.leaves_suffix_indented(text, ctx(cursor, MULTI, language_id)) is leaves


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
        ("x = |;", "javascript", "a; b", 0),  # ...only at the end
        ("re|)", "python", "turn sorted(x)", 1),  # the line's unmatched `)` is typed again
        ("arr[|]", "javascript", "i]", 1),
        ("function f() {|}", "javascript", "\n  return 1;\n}", 1),
        ("foo(|)  ", "python", "a)", 1),  # trailing spaces right of the closers stay
        ("a\n|)", "python", "    x,\n", 0),  # a line start inserts whole lines
        # interpolations: `}` closes the code inside the string
        ('print(f"{|}")', "python", 'total:.2f}")', 3),
        ("console.log(`${|}`);", "javascript", "total}`);", 4),
        # an outer call keeps its `)`
        ("f(g(|))", "python", "x) + h(y)", 1),
        ("f(g(|))", "python", "x) + h(y))", 2),
        ("return [(e|]", "python", " + 1) for e in l]", 1),
    ],
)
def test_closing_overlap(cursor: str, language_id: str, text: str, replaced: int) -> None:
    assert pp.closing_overlap(text, ctx(cursor, SINGLE, language_id)) == replaced


@pytest.mark.parametrize(
    ("cursor", "language_id", "text", "expected"),
    [
        # the model rewrote the rest of the line: cut where the code there begins
        ("if (isValid(|)) {", "javascript", "user) && user.active) {", Suggestion("user")),
        ("foo(bar(|), 2)", "python", "x), 3)", Suggestion("x")),
        # an insertion that keeps the line as balanced as it is stays an insertion
        ("print(|, end='')", "python", "x", Suggestion("x")),
        ("return |string)", "python", "len(", Suggestion("len(")),  # ...or makes it more so
        # else a whole line of its own replaces the rest of the line
        ("print(|, end='')", "python", "x)", Suggestion("x)", 9)),
        # else nothing
        ("foo(|, b)", "python", "a, c(", None),
    ],
)
def test_fit_before_code(
    cursor: str, language_id: str, text: str, expected: Suggestion | None
) -> None:
    assert pp.fit_before_code(text, ctx(cursor, SINGLE, language_id)) == expected


# ---- the Finisher: token by token, as the server runs it --------------------------------------

# (cursor, mode, what the model generates, the suggestion)
STREAMED = [
    (
        at("def f(x):\n    |\n    y = x + 1\n    return y\n"),
        MULTI,
        "a = 2\n    y = x + 1\n    return y\n\ndef g():\n",
        Suggestion("a = 2"),
    ),
    (at("x = |\n"), SINGLE, "compute(1, 2)\nprint(x)\n", Suggestion("compute(1, 2)")),
    (
        at("function f() {|", "javascript"),
        MULTI,
        "\n  return 1;\n}\n\nfunction g() {\n  return 2;\n}\n",
        Suggestion("\n  return 1;\n}"),
    ),
    (
        at("for x in xs:|\n"),
        MULTI,
        "\n    total += x\n    total += x\n    total += x\n    total += x\n",
        Suggestion("\n    total += x"),
    ),
    (at("if x |< limit:\n    go()\n"), MULTI, "and y < limit:\n    go()\n", Suggestion("and y ")),
    # a loop of tokens inside a call on the cursor's line: nothing finished to offer
    (at("x = |\n"), SINGLE, "call(" + "a, b, " * 20 + ")\n", None),
    (at("def f():\n    |"), MULTI, "return g(" + "g(" * 40, None),
    # ...on a later line: the lines before it stay
    (
        at("def f(s):\n    |"),
        MULTI,
        "x = 1\n    return s.decode(" + "s.decode(" * 20,
        Suggestion("x = 1"),
    ),
    # the line the suffix has already, then code at the outer level (issue 16, 1)
    (
        at("def total(xs):\n    result = 0\n    |\n    return result\n\n\ndef main():\n    pass\n"),
        MULTI,
        "for x in xs:\n        result += x\n    return result\n\n\nprint(total([1]))\n",
        Suggestion("for x in xs:\n        result += x"),
    ),
    # five copies on an indented empty line: one stays (issue 16, 3)
    (
        at("def f(xs):\n    for x in xs:\n        |\n"),
        MULTI,
        "total += x\n" + "        total += x\n" * 4,
        Suggestion("total += x"),
    ),
    # interpolations with the editor's closers right of the cursor (issue 16, 2)
    (at('print(f"{|}")\n'), SINGLE, 'total:.2f}")\n', Suggestion('total:.2f}")', 3)),
    (
        at("console.log(`Total: ${|}`);\n", "javascript"),
        SINGLE,
        "total}`);\nfoo();\n",
        Suggestion("total}`);", 4),
    ),
    # a rewrite of the rest of the line: cut where the code right of the cursor begins (issue 16, 5)
    (
        at("if (isValid(|)) {\n  go();\n}\n", "javascript"),
        SINGLE,
        "user) && user.active) {\n",
        Suggestion("user"),
    ),
]


@pytest.mark.parametrize(("cursor", "mode", "raw", "expected"), STREAMED)
def test_finisher_fed_token_by_token(
    tokenizer: FimTokenizer,
    cursor: Cursor,
    mode: Mode,
    raw: str,
    expected: Suggestion | None,
) -> None:
    """The server's path: the engine asks after every token and decoding stops; the suggestion
    is what the rules make of it, whether decoding stopped there or ran on to the end."""
    ids = tokenizer.encode(raw)
    found, stopped_at = feed(Finisher(tokenizer.decode, cursor, mode), ids)
    assert stopped_at is not None
    assert found == expected
    assert Finisher(tokenizer.decode, cursor, mode).suggestion(ids) == expected


def test_finisher_cuts_at_the_stop_not_at_the_end_of_the_stopping_token() -> None:
    """A token may finish one line and begin the next: the suggestion ends where the rule cut,
    and the line before the cut is judged as the last one (here it repeats the suffix's)."""
    pieces = ["for x in xs:", "\n        result += x", "\n    return result\n\ndef ", "g():\n"]
    cursor = at("def total(xs):\n    result = 0\n    |\n    return result\n")
    finisher = Finisher(lambda ids: "".join(pieces[i] for i in ids), cursor, MULTI)
    found, stopped_at = feed(finisher, list(range(len(pieces))))
    assert stopped_at == 3
    assert found == Suggestion("for x in xs:\n        result += x")


def test_finisher_never_reads_half_a_character(demo_tokenizer: FimTokenizer) -> None:
    """Byte-level BPE splits characters over tokens; the rules only ever see whole ones."""
    raw = 'label = "héllo wörld 😀 日本語 ✓"\nnext()\n'
    ids = demo_tokenizer.encode(raw)
    assert any(pp.PARTIAL_CHARACTER in demo_tokenizer.decode([i]) for i in ids)
    finisher = Finisher(demo_tokenizer.decode, at("|"), SINGLE)
    for count in range(1, len(ids) + 1):
        if finisher.should_stop(ids[:count]):
            break
        assert pp.PARTIAL_CHARACTER not in finisher.text
        assert raw.startswith(finisher.text)
    assert finisher.suggestion(ids[:count]) == Suggestion('label = "héllo wörld 😀 日本語 ✓"')


def test_a_character_left_unfinished_by_the_last_token_is_dropped(
    demo_tokenizer: FimTokenizer,
) -> None:
    ids = demo_tokenizer.encode("x = 1 # 😀")
    assert demo_tokenizer.decode(ids[:-1]).endswith(pp.PARTIAL_CHARACTER)
    found = Finisher(demo_tokenizer.decode, at("|"), SINGLE).suggestion(ids[:-1])
    assert found == Suggestion("x = 1 #")


def test_finisher_reads_line_endings_as_lf() -> None:
    ids, decode = by_characters("a = 1\r\n    b = 2\r\n    return b\r\n")
    cursor = at("def f():\n    |\n    return b\n")
    assert feed(Finisher(decode, cursor, MULTI), ids)[0] == Suggestion("a = 1\n    b = 2")


@pytest.mark.parametrize(
    ("late_from", "expected"),
    [
        (None, "a = (1 +\n        2)\n    b = 3\n    c = 4"),  # never late
        (0, "a = (1 +\n        2)"),  # late from the start: that line (to its `)`) ends it
        (3, "a = (1 +\n        2)\n    b = 3"),  # late while the next line is being written
    ],
)
def test_finisher_ends_at_the_next_line_end_past_the_deadline(
    monkeypatch: pytest.MonkeyPatch, late_from: int | None, expected: str
) -> None:
    """maxTimeMs: past the deadline, the line being written is finished (its brackets closed)
    and nothing more."""
    pieces = ["a = (1 +", "\n        2", ")\n    b = 3", "\n    c = 4\n"]
    clock = iter(range(100))
    monkeypatch.setattr(pp.time, "perf_counter", lambda: next(clock))
    deadline = None if late_from is None else late_from - 0.5  # the clock reads 0, 1, 2...

    def decode(ids: list[int]) -> str:
        return "".join(pieces[i] for i in ids)

    finisher = Finisher(decode, at("def f():\n    |"), MULTI, deadline)
    assert feed(finisher, list(range(len(pieces))))[0] == Suggestion(expected)


def test_finisher_works_out_the_cursor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(pp, "context", lambda *args: calls.append(args) or context(*args))
    ids, decode = by_characters("a = 1\n    b = 2\n    c = 3\n")
    feed(Finisher(decode, at("def f():\n    |"), MULTI), ids)
    assert len(calls) == 1


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", "<|endoftext|>", "\t\n"])
def test_finisher_never_suggests_blank_text(raw: str) -> None:
    assert finish(at("x = |"), SINGLE, raw) is None
    assert finish(at("def f():\n    |"), MULTI, raw) is None


def test_finisher_offers_nothing_when_only_the_suffix_comes_back() -> None:
    assert finish(at("def f(y):\n|    return y\n"), MULTI, "    return y\n") is None


def test_finisher_keeps_generating_while_nothing_is_decided() -> None:
    ids, decode = by_characters("total = sum(")
    assert not Finisher(decode, at("x = 1\n|"), SINGLE).should_stop(ids)
    ids, decode = by_characters("\n    a = 1\n    b")
    assert not Finisher(decode, at("def f():|"), MULTI).should_stop(ids)


# ---- golden cases -----------------------------------------------------------------------------


def golden_cases() -> list:
    cases = []
    for path in sorted(GOLDEN.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            cases.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return cases


@pytest.mark.parametrize("case", golden_cases())
def test_golden(case: dict, demo_tokenizer: FimTokenizer) -> None:
    """Hand-written editing situations: the gate's mode, then the suggestion the Finisher makes
    of the raw output fed token by token (the document's line endings converted at the edge,
    as the pipeline does)."""
    cursor = Cursor(case["prefix"], case["suffix"], case["language"])
    mode = decide(cursor, case.get("multiline", "auto"))
    assert (mode.value if mode else None) == case["mode"]
    found = None
    if mode:
        finisher = Finisher(demo_tokenizer.decode, cursor.normalized(), mode)
        found = feed(finisher, demo_tokenizer.encode(case["raw"]))[0]
    expected = case["expected"]
    if expected is None:
        assert found is None
    else:
        text = expected.replace(cursor.line_ending, "\n")
        assert found == Suggestion(text, case.get("replace_chars", 0))
