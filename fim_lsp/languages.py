"""What the decide-and-clean stages need to know per language: comments, blocks, strings, stops."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Interpolation:
    """Code inside a string: Python's `f"{x}"`, JavaScript's `` `${x}` ``, the shell's `"$(x)"`."""

    quote: str  # the strings it happens in
    opener: str  # starts the code ("{", "${", "$("); the bracket it ends with closes it
    prefix: str = ""  # regex the text right before the quote must end with ("" = every string)
    doubled_is_text: bool = False  # the opener twice is a literal brace (`{{` in an f-string)


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
    # Words that go on with a block's statement on a line at its header's level (`else:`,
    # `} catch (e) {`): such a line does not leave the block.
    clause_words: tuple[str, ...]
    quotes: tuple[str, ...]  # characters that open and close a string on one line
    # Multi-line output stops where one of these starts: a new top-level definition, which is
    # almost never part of the same suggestion.
    stop_strings: tuple[str, ...]
    interpolations: tuple[Interpolation, ...] = ()
    # The indentation step the language's formatter or style guide prescribes, for files that
    # do not show their own yet ("" = no convention: the model's own is kept).
    indentation: str = ""


C_LIKE_QUOTES = ('"', "'")
C_STOPS = ("\n#include", "\n#define", "\n#if", "\n#pragma")

JAVA = Language(
    ids=("java",),
    comment_prefix="//",
    block_style="braces",
    block_opener=r"\{",
    block_closers=(),
    clause_words=("else", "catch", "finally"),
    quotes=C_LIKE_QUOTES,
    stop_strings=("\npublic class ", "\nclass ", "\nimport ", "\npackage "),
)

LANGUAGES = (
    Language(
        ids=("python",),
        comment_prefix="#",
        block_style="indent",
        block_opener=r":",
        block_closers=(),
        clause_words=("elif", "else", "except", "finally"),
        quotes=('"', "'"),
        stop_strings=("\ndef ", "\nasync def ", "\nclass ", "\nif __name__", "\n@"),
        # f-strings and t-strings (3.14), raw or not: `{{` is a literal brace.
        interpolations=tuple(
            Interpolation(quote, "{", r"(?<![\w])(?:[rR]?[fFtT]|[fFtT][rR])", doubled_is_text=True)
            for quote in ('"', "'")
        ),
        indentation="    ",  # PEP 8
    ),
    Language(
        ids=("javascript", "javascriptreact", "typescript", "typescriptreact"),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{|=>",
        block_closers=(),
        clause_words=("else", "catch", "finally"),
        quotes=('"', "'", "`"),
        stop_strings=("\nfunction ", "\nexport ", "\nclass ", "\nimport ", "\ninterface "),
        interpolations=(Interpolation("`", "${"),),  # template literals
    ),
    Language(
        ids=("go",),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        clause_words=("else",),
        # Rune literals are one character long, so a `'` never leaves an unclosed string.
        quotes=('"', "`"),
        stop_strings=("\nfunc ", "\ntype ", "\nimport ", "\npackage "),
        indentation="\t",  # gofmt
    ),
    Language(
        ids=("rust",),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        clause_words=("else",),
        # `'` starts lifetimes (`&'a str`) more often than char literals.
        quotes=('"',),
        stop_strings=("\nfn ", "\npub fn ", "\nimpl ", "\nstruct ", "\nenum ", "\n#[", "\nmod "),
        indentation="    ",  # rustfmt
    ),
    Language(
        ids=("c", "cpp", "objective-c", "objective-cpp", "cuda-cpp"),
        comment_prefix="//",
        block_style="braces",
        block_opener=r"\{",
        block_closers=(),
        clause_words=("else",),
        quotes=C_LIKE_QUOTES,
        stop_strings=C_STOPS,
    ),
    JAVA,
    dataclasses.replace(JAVA, ids=("kotlin",), interpolations=(Interpolation('"', "${"),)),
    # C#'s interpolated strings: $"{x}", also verbatim ($@"..." or @$"...").
    dataclasses.replace(
        JAVA,
        ids=("csharp",),
        interpolations=(Interpolation('"', "{", r"\$@?|@\$", doubled_is_text=True),),
    ),
    Language(
        ids=("lua",),
        comment_prefix="--",
        block_style="braces",
        block_opener=r"\bthen|\bdo|\belse|\brepeat|\bfunction\b.*\)|\{",
        block_closers=("end",),
        clause_words=("else", "elseif"),
        quotes=('"', "'"),
        stop_strings=("\nfunction ", "\nlocal function ", "\nreturn M"),
    ),
    Language(
        ids=("shellscript", "sh", "bash", "zsh"),
        comment_prefix="#",
        block_style="braces",
        block_opener=r"\bthen|\bdo|\belse|\{|\bin",
        block_closers=("fi", "done", "esac"),
        clause_words=("else", "elif"),
        quotes=('"', "'"),
        stop_strings=(),
        interpolations=(Interpolation('"', "${"), Interpolation('"', "$(")),
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
    clause_words=("else",),
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


BRACKETS = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True)
class Frame:
    """Something open at a point of the code: a bracket, a string, or code inside a string."""

    closer: str  # the character that ends it
    start: int  # index of what opened it, in the text it was opened in
    # A string: the interpolations its text may hold. None: a bracket (code inside).
    interpolations: tuple[Interpolation, ...] | None = None

    @property
    def is_string(self) -> bool:
        return self.interpolations is not None


Nesting = tuple[Frame, ...]  # innermost last


@dataclass(frozen=True)
class Scan:
    nesting: Nesting  # what is open where the text ends
    inherited: int  # how many of those frames were open before the text (the outermost ones)
    # Indices of the characters that close what was open before the text (from the `nesting`
    # it started with), or close nothing known (from earlier lines, or not the bracket open).
    closes_outer: tuple[int, ...]
    comment: int  # where the first line comment starts; len(text) when there is none


def scan(text: str, language: Language, nesting: Nesting = ()) -> Scan:
    """Brackets, strings, interpolations and comments in `text`, which starts inside `nesting`.

    A line comment runs to the end of its line. Strings may span lines (Python's triple quotes
    then read as an empty string and an open one, which the closing triple quote undoes).
    """
    stack = list(nesting)
    outer = len(stack)  # the frames below this depth were open before the text
    closes_outer: list[int] = []
    comment = len(text)

    def close(index: int) -> None:
        nonlocal outer
        if not stack or stack[-1].closer != text[index]:
            closes_outer.append(index)  # closes nothing the text knows of
            return
        if len(stack) <= outer:  # it was open before the text
            closes_outer.append(index)
            outer = len(stack) - 1
        stack.pop()

    index = 0
    while index < len(text):
        char = text[index]
        top = stack[-1] if stack else None
        if top is not None and top.interpolations is not None:  # in a string's text
            way = next((w for w in top.interpolations if text.startswith(w.opener, index)), None)
            if char == "\\":
                index += 1  # the escaped character is text
            elif char == top.closer:
                close(index)
            elif way and way.doubled_is_text and text.startswith(way.opener * 2, index):
                index += 2 * len(way.opener) - 1
            elif way:
                stack.append(Frame(BRACKETS[way.opener[-1]], index))
                index += len(way.opener) - 1
        elif (
            language.comment_prefix
            and text.startswith(language.comment_prefix, index)
            and not in_string(stack)  # in an interpolation it is code: the shell's `"${#x}"`
        ):
            comment = min(comment, index)
            line_end = text.find("\n", index)
            index = len(text) if line_end < 0 else line_end
            continue
        elif char in language.quotes:
            before = text[max(0, index - 3) : index]  # room for a string prefix like `rf`
            ways = tuple(
                way
                for way in language.interpolations
                if way.quote == char and re.search(f"(?:{way.prefix})$", before)
            )
            stack.append(Frame(char, index, ways))
        elif char in BRACKETS:
            stack.append(Frame(BRACKETS[char], index))
        elif char in ")]}":
            close(index)
        index += 1
    return Scan(tuple(stack), outer, tuple(closes_outer), comment)


def code_part(line: str, language: Language) -> str:
    """`line` without its trailing line comment (a comment prefix inside a string does not count)."""
    return line[: scan(line, language).comment]


def unbalanced(text: str, language: Language) -> int:
    """How many brackets and strings `text` leaves open or closes without opening them."""
    found = scan(text, language)
    return len(found.nesting) + len(found.closes_outer)


def in_string(nesting: Iterable[Frame]) -> bool:
    """Whether a point with this nesting is inside a string (its text or its interpolation)."""
    return any(frame.is_string for frame in nesting)


def opens_block(line: str, language: Language) -> bool:
    """Whether the code on `line` ends the way a block header does (`:` in Python, `{`...).

    Not when it ends inside a string: `f"{total:` and `` `${`` open no block."""
    found = scan(line, language)
    code = line[: found.comment].rstrip()
    return (
        not in_string(found.nesting)
        and re.search(f"(?:{language.block_opener})$", code) is not None
    )


def continues_block(line: str, language: Language) -> bool:
    """Whether `line` goes on with the statement of a block that ends above it (`else:`, `elif x:`,
    `} else {`)."""
    code = code_part(line, language).strip().lstrip("}").lstrip()
    return any(re.match(rf"{word}\b", code) for word in language.clause_words)


def closes_block(line: str, language: Language) -> bool:
    """Whether `line` only ends blocks: closing brackets (`})`, `];`) or a closing word (`end`)."""
    code = code_part(line, language).strip()
    if not code:
        return False
    core = code.rstrip(")]};,")
    return (core == "" and code[0] in ")]}") or core in language.block_closers
