"""Decide whether to complete at the cursor, and whether one line or a whole block is wanted."""

from __future__ import annotations

import enum

from fim_lsp.documents import LINE_END, Cursor
from fim_lsp.languages import language_for, opens_block
from fim_lsp.settings import MULTILINE

# Right of the cursor, these do not make "code to the right": editors insert them in pairs,
# and post-processing can overwrite them (see postprocess.closing_overlap).
CLOSING = frozenset(")]}\"'`;,.:")


class Mode(enum.Enum):
    SINGLE_LINE = "single-line"
    MULTI_LINE = "multi-line"


def decide(
    cursor: Cursor, multiline: str = "auto", single_line_requested: bool = False
) -> Mode | None:
    """The kind of completion wanted at `cursor`, or None where no suggestion should be offered."""
    if multiline not in MULTILINE:
        raise ValueError(f"multiline must be one of {', '.join(MULTILINE)}, not {multiline!r}")
    left, right = line_around(cursor)
    if before_word(right):
        return None
    # The client's request wins over the setting: it knows whether it can show a block.
    if single_line_requested or multiline == "never":
        return Mode.SINGLE_LINE
    if multiline == "always":
        return Mode.MULTI_LINE
    return auto_mode(left, right, cursor.language_id)


def line_around(cursor: Cursor) -> tuple[str, str]:
    """The cursor's line split at the cursor: (text left of it, text right of it)."""
    prefix, suffix = cursor.prefix, cursor.suffix
    left = prefix[max(prefix.rfind("\n"), prefix.rfind("\r")) + 1 :]
    line_end = LINE_END.search(suffix)
    return left, suffix[: line_end.start()] if line_end else suffix


def before_word(right: str) -> bool:
    # Completing glued to an identifier (mid-word, or just before one) mostly repeats the word.
    return bool(right) and (right[0].isalnum() or right[0] in "_$")


def code_to_the_right(right: str) -> bool:
    return any(not char.isspace() and char not in CLOSING for char in right)


def auto_mode(left: str, right: str, language_id: str) -> Mode:
    """`multiline: auto`: a block on an empty line or after a block header, else one line."""
    if code_to_the_right(right):
        return Mode.SINGLE_LINE
    if not left.strip() or opens_block(left, language_for(language_id)):
        return Mode.MULTI_LINE
    return Mode.SINGLE_LINE
