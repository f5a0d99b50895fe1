"""What the decide-and-clean stages need to know per language: comments, blocks, quotes, stops."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Language:
    ids: tuple[str, ...]  # LSP languageIds
    comment_prefix: str  # line comment; "" when the language has none
    block_style: str  # "indent": blocks end by dedenting; "braces": by a closing line
    # Matched against the end of a line's code: that line opens a block (a body is expected).
    block_opener: str
    # Words that end a block on a line of their own (`end`, `fi`); a line of closing brackets
    # ends a block in every language.
    block_closers: tuple[str, ...]
    quotes: tuple[str, ...]  # characters that open and close a string on one line
    # Multi-line output stops where one of these starts: a new top-level definition, which is
    # almost never part of the same suggestion.
    stop_strings: tuple[str, ...]


C_LIKE_QUOTES = ('"', "'")
C_STOPS = ("\n#include", "\n#define", "\n#if", "\n#pragma")

LANGUAGES = (
    Language(
        ids=("python",),
        comment_prefix="#",
        block_style="indent",
        block_opener=r":",
        block_closers=(),
        quotes=('"', "'"),
        stop_strings=("\ndef ", "\nasync def ", "\nclass ", "\nif __name__", "\n@"),
    ),
    Language(
        ids=("javascript", "javascriptreact", "typescript", "typescriptreact"),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{|=>",
        block_closers=(),
        quotes=('"', "'", "`"),
        stop_strings=("\nfunction ", "\nexport ", "\nclass ", "\nimport ", "\ninterface "),
    ),
    Language(
        ids=("go",),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        # Rune literals are one character long, so a `'` never leaves an unclosed string.
        quotes=('"', "`"),
        stop_strings=("\nfunc ", "\ntype ", "\nimport ", "\npackage "),
    ),
    Language(
        ids=("rust",),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        # `'` starts lifetimes (`&'a str`) more often than char literals.
        quotes=('"',),
        stop_strings=("\nfn ", "\npub fn ", "\nimpl ", "\nstruct ", "\nenum ", "\n#[", "\nmod "),
    ),
    Language(
        ids=("c", "cpp", "objective-c", "objective-cpp", "cuda-cpp"),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        quotes=C_LIKE_QUOTES,
        stop_strings=C_STOPS,
    ),
    Language(
        ids=("java", "csharp", "kotlin"),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        quotes=C_LIKE_QUOTES,
        stop_strings=("\npublic class ", "\nclass ", "\nimport ", "\npackage "),
    ),
    Language(
        ids=("lua",),
        comment_prefix="--",
        block_style="braces",
        block_opener=r"\bthen|\bdo|\belse|\brepeat|\bfunction\b.*\)|\{",
        block_closers=("end",),
        quotes=('"', "'"),
        stop_strings=("\nfunction ", "\nlocal function ", "\nreturn M"),
    ),
    Language(
        ids=("shellscript", "sh", "bash", "zsh"),
        comment_prefix="#",
        block_style="braces",
        block_opener=r"\bthen|\bdo|\belse|\{|\bin",
        block_closers=("fi", "done", "esac"),
        quotes=('"', "'"),
        stop_strings=(),
    ),
)

# For ids not in the table: brace-delimited blocks are the common case, and nothing language
# specific (comments, stop strings) is assumed.
DEFAULT = Language(
    ids=(),
    comment_prefix="",
    block_style="braces",
    block_opener=r"\{",
    block_closers=(),
    quotes=('"', "'"),
    stop_strings=(),
)

BY_ID = {language_id: language for language in LANGUAGES for language_id in language.ids}

# File extension -> LSP languageId, for files read from disk (`fim-lsp complete`); editors send
# the languageId themselves.
LANGUAGE_IDS = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".jsx": "javascriptreact", ".ts": "typescript",
    ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".c": "c", ".h": "c", ".cc": "cpp",
    ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".cu": "cuda-cpp",
    ".mm": "objective-cpp", ".java": "java", ".cs": "csharp",
    ".kt": "kotlin", ".kts": "kotlin", ".lua": "lua", ".sh": "shellscript",
    ".bash": "shellscript", ".zsh": "zsh",
}  # fmt: skip


def language_for(language_id: str) -> Language:
    """The table entry for an LSP languageId; `DEFAULT` for ids the table does not know."""
    return BY_ID.get(language_id.lower(), DEFAULT)


def language_id_for(path: Path) -> str:
    """The languageId of a file from its extension; "" when the table does not know it."""
    return LANGUAGE_IDS.get(path.suffix.lower(), "")


def scan(line: str, language: Language) -> tuple[int, str]:
    """Where `line`'s trailing comment starts (its length when there is none), and the quote
    of a string still open where the code ends ("" when none)."""
    quote = ""
    index = 0
    while index < len(line):
        char = line[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in language.quotes:
            quote = char
        elif language.comment_prefix and line.startswith(language.comment_prefix, index):
            return index, ""
        index += 1
    return len(line), quote


def code_part(line: str, language: Language) -> str:
    """`line` without its trailing line comment (a comment prefix inside a string does not count)."""
    return line[: scan(line, language)[0]]


def open_quote(line: str, language: Language) -> str:
    """The quote whose string is still open at the end of `line`, or ""."""
    return scan(line, language)[1]


def opens_block(line: str, language: Language) -> bool:
    """Whether the code on `line` ends the way a block header does (`:` in Python, `{`...)."""
    code = code_part(line, language).rstrip()
    return re.search(f"(?:{language.block_opener})$", code) is not None


def closes_block(line: str, language: Language) -> bool:
    """Whether `line` only ends blocks: closing brackets (`})`, `];`) or a closing word (`end`)."""
    code = code_part(line, language).strip()
    if not code:
        return False
    core = code.rstrip(")]};,")
    return (core == "" and code[0] in ")]}") or core in language.block_closers
