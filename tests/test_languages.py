"""The language table: lookups, comments, block headers and closing lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from fim_lsp.languages import (
    DEFAULT,
    LANGUAGE_IDS,
    closes_block,
    code_part,
    language_for,
    language_id_for,
    opens_block,
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
