"""The language table: lookups, comments, strings and interpolation, block headers and closers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fim_lsp.languages import (
    DEFAULT,
    LANGUAGE_IDS,
    closes_block,
    code_part,
    continues_block,
    language_for,
    language_id_for,
    opens_block,
    scan,
    unbalanced,
)

REQUIRED = [
    "python",
    "javascript",
    "typescript",
    "typescriptreact",
    "go",
    "rust",
    "c",
    "cpp",
    "java",
    "lua",
    "shellscript",
]


@pytest.mark.parametrize("language_id", REQUIRED)
def test_every_required_language_has_an_entry(language_id: str) -> None:
    language = language_for(language_id)
    assert language is not DEFAULT
    assert language.block_style in ("indent", "braces")
    assert language.comment_prefix


def test_unknown_ids_get_the_default_and_case_is_ignored() -> None:
    assert language_for("cobol") is DEFAULT
    assert language_for("") is DEFAULT
    assert language_for("Python") is language_for("python")


@pytest.mark.parametrize("extension", sorted(LANGUAGE_IDS))
def test_every_file_extension_names_a_language_in_the_table(extension: str) -> None:
    assert language_for(LANGUAGE_IDS[extension]) is not DEFAULT


def test_language_ids_of_files() -> None:
    assert language_id_for(Path("src/main.RS")) == "rust"
    assert language_id_for(Path("app.tsx")) == "typescriptreact"
    assert language_id_for(Path("notes.txt")) == ""
    assert language_id_for(Path("Makefile")) == ""


@pytest.mark.parametrize(
    ("language_id", "line", "code"),
    [
        ("python", "x = 1  # note", "x = 1  "),
        ("python", "s = '# not a comment'", "s = '# not a comment'"),
        ("python", 's = "a\\"#b"  # c', 's = "a\\"#b"  '),
        ("go", "x := 1 // note", "x := 1 "),
        ("lua", "x = 1 -- note", "x = 1 "),
        ("shellscript", 'echo "#x" # note', 'echo "#x" '),
        ("cobol", "x = 1 // no comment syntax known", "x = 1 // no comment syntax known"),
    ],
)
def test_code_part(language_id: str, line: str, code: str) -> None:
    assert code_part(line, language_for(language_id)) == code


@pytest.mark.parametrize(
    ("language_id", "line", "opens"),
    [
        ("python", "def f(x):", True),
        ("python", "    if x:  # why", True),
        ("python", "x = {", False),
        ("python", "return x", False),
        ("javascript", "function f() {", True),
        ("javascript", "const f = () =>", True),
        ("javascript", "f();", False),
        ("go", "for i := range xs {", True),
        ("rust", "fn main() {", True),
        ("c", "int main(void) {", True),
        ("java", "public void run() {", True),
        ("lua", "if x then", True),
        ("lua", "for i = 1, 10 do", True),
        ("lua", "local function f(a, b)", True),
        ("lua", "print(x)", False),
        ("shellscript", "if [ -f x ]; then", True),
        ("shellscript", "for f in *.txt; do", True),
        ("shellscript", "echo done", False),
    ],
)
def test_opens_block(language_id: str, line: str, opens: bool) -> None:
    assert opens_block(line, language_for(language_id)) is opens


@pytest.mark.parametrize(
    ("language_id", "line", "closes"),
    [
        ("javascript", "}", True),
        ("javascript", "  });", True),
        ("rust", "},", True),
        ("javascript", "} else {", False),
        ("javascript", "x;", False),
        ("python", ")", True),
        ("python", "", False),
        ("lua", "end", True),
        ("lua", "end)", True),
        ("lua", "ending()", False),
        ("shellscript", "fi", True),
        ("shellscript", "done", True),
        ("shellscript", "esac", True),
    ],
)
def test_closes_block(language_id: str, line: str, closes: bool) -> None:
    assert closes_block(line, language_for(language_id)) is closes


@pytest.mark.parametrize(
    ("language_id", "line", "closers"),
    [
        ("python", "foo(a, [b", ")]"),
        ("python", 'print(f"{total:', ')"}'),  # inside an f-string's replacement field
        ("python", 'print(f"{{literal', ')"'),  # `{{` is a brace, not code
        ("python", 'x = rf"{a["b"]}', '"'),  # quotes inside the field are code again
        ("python", 'print("{x', ')"'),  # not an f-string: the brace is text
        ("python", "x = (1)  # (", ""),  # brackets in a comment do not count
        ("javascript", "console.log(`Total: ${", ")`}"),
        ("javascript", "`${a}` + `${{b: 1}.b}`", ""),
        ("javascript", "'${'", ""),  # only template literals interpolate
        ("kotlin", 'println("${', ')"}'),
        ("java", 'String s = "${', '"'),  # Java strings do not interpolate
        ("csharp", 'Console.Write($"{', ')"}'),
        ("shellscript", 'echo "$(date', '")'),
        ("shellscript", 'echo "${#items[@]}', '"'),  # `#` inside is no comment
    ],
)
def test_scan_nesting(language_id: str, line: str, closers: str) -> None:
    found = scan(line, language_for(language_id))
    assert "".join(frame.closer for frame in found.nesting) == closers
    assert not found.closes_outer


@pytest.mark.parametrize(
    ("language_id", "start", "text", "closes", "inherited"),
    [
        ("python", "foo(", "a, b)", [4], 0),
        ("python", "foo(bar(", "x) + g(y))", [1, 9], 0),
        ("python", 'print("', 'hi")', [2, 3], 0),
        ("python", 'print(f"{', 'total:.2f}")', [9, 10, 11], 0),
        ("javascript", "log(`${", "a}`)", [1, 2, 3], 0),
        ("python", "foo(", "a", [], 1),  # still inside the call
        ("python", "", "a)]", [1, 2], 0),  # closes what earlier lines opened
        ("python", "[", "a)", [1], 1),  # not the bracket that is open: closes nothing known
    ],
)
def test_scan_closes_outer(
    language_id: str, start: str, text: str, closes: list[int], inherited: int
) -> None:
    language = language_for(language_id)
    found = scan(text, language, scan(start, language).nesting)
    assert list(found.closes_outer) == closes
    assert found.inherited == inherited


def test_scan_frames_record_where_they_open() -> None:
    found = scan("x = foo(a, [1", language_for("python"))
    assert [frame.start for frame in found.nesting] == [7, 11]


def test_scan_reads_python_docstrings_across_lines() -> None:
    text = 'def f():\n    """Don\'t (\n    """\n    return (1'
    assert "".join(f.closer for f in scan(text, language_for("python")).nesting) == ")"


@pytest.mark.parametrize(
    ("line", "count"),
    [
        ("foo(a)", 0),
        ("foo(a", 1),
        ("foo(a))", 1),
        ("if (isValid(user) && ok) {)) {", 4),  # `}` open twice, two `)` closing nothing
        ('print("a(")', 0),
        ("x = [1, 2)", 2),  # `[` open, `)` closes nothing
    ],
)
def test_unbalanced(line: str, count: int) -> None:
    assert unbalanced(line, language_for("python")) == count


@pytest.mark.parametrize(
    ("language_id", "line", "opens"),
    [
        ("python", 'print(f"{total:', False),  # a format spec, not a block
        ("python", "    if x:", True),
        ("javascript", "console.log(`${", False),
        ("javascript", "const s = `a ${f({", False),
        ("shellscript", 'echo "${', False),
        ("shellscript", "if [ -f x ]; then  # a {", True),
    ],
)
def test_opens_block_inside_strings(language_id: str, line: str, opens: bool) -> None:
    assert opens_block(line, language_for(language_id)) is opens


@pytest.mark.parametrize(
    ("language_id", "line", "continues"),
    [
        ("python", "else:", True),
        ("python", "    elif x > 1:", True),
        ("python", "except ValueError:", True),
        ("python", "elsewhere = 1", False),
        ("python", "return x", False),
        ("javascript", "} else {", True),
        ("javascript", "} catch (e) {", True),
        ("javascript", "}", False),
        ("go", "} else if x {", True),
        ("lua", "elseif x then", True),
        ("shellscript", "elif [ x ]; then", True),
    ],
)
def test_continues_block(language_id: str, line: str, continues: bool) -> None:
    assert continues_block(line, language_for(language_id)) is continues


def test_formatters_conventions_are_in_the_table() -> None:
    assert language_for("go").indentation == "\t"
    assert language_for("python").indentation == "    "
    assert language_for("javascript").indentation == ""  # no single convention
