"""The edge between LSP positions and text: the cursor (prefix, suffix) and reply ranges."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lsprotocol import types

# LSP ends lines at \n, \r\n or \r only. (str.splitlines also splits at \f, \x1c, \u2028...,
# which would put the cursor on the wrong line in files with form feeds.)
LINE_END = re.compile(r"\r\n|\r|\n")

UNITS_PER_CHAR: dict[str, Callable[[str], int]] = {
    "utf-8": lambda char: len(char.encode("utf-8")),
    "utf-16": lambda char: 2 if ord(char) > 0xFFFF else 1,  # astral characters: a surrogate pair
    "utf-32": lambda char: 1,
}


class PositionError(ValueError):
    """A position that does not exist in the document."""


@dataclass(frozen=True)
class Cursor:
    prefix: str  # document text before the cursor (line endings as in the document)
    suffix: str  # document text after the cursor
    language_id: str = ""  # LSP languageId, e.g. "python"

    @property
    def line_ending(self) -> str:
        """The document's line ending: the first one found, LF when there is none."""
        match = LINE_END.search(self.prefix) or LINE_END.search(self.suffix)
        return match.group() if match else "\n"

    def normalized(self) -> Cursor:
        """The same cursor with LF line endings, as the model saw code in training."""
        return Cursor(to_lf(self.prefix), to_lf(self.suffix), self.language_id)


def to_lf(text: str) -> str:
    return LINE_END.sub("\n", text)


def line_starts(text: str) -> list[int]:
    """String offsets where each LSP line begins."""
    return [0, *(match.end() for match in LINE_END.finditer(text))]


def offset_at(text: str, position: types.Position, encoding: str) -> int:
    """The string offset of an LSP position given in the negotiated encoding's code units.

    A character past the end of its line means the end of the line (as the LSP spec says);
    a line past the end of the document is an error.
    """
    starts = line_starts(text)
    if position.line >= len(starts):  # lsprotocol already refuses negative numbers
        raise PositionError(
            f"position {position.line}:{position.character} is outside the document "
            f"({len(starts)} lines)"
        )
    start = starts[position.line]
    end = starts[position.line + 1] if position.line + 1 < len(starts) else len(text)
    line = to_lf(text[start:end]).rstrip("\n")
    units = UNITS_PER_CHAR.get(encoding, UNITS_PER_CHAR["utf-16"])
    seen = 0
    for index, char in enumerate(line):
        if seen >= position.character:
            return start + index
        seen += units(char)
    return start + len(line)


def apply_change(text: str, change: types.TextDocumentContentChangeEvent, encoding: str) -> str:
    """`text` after one change of a didChange notification.

    pygls applies incremental changes to the lines of `str.splitlines`, which also splits at
    form feeds (page breaks in Python and Lisp files) and other characters: an edit after one
    landed on the wrong line. Here positions are LSP's (`offset_at`); a position past the end of
    the document means its end, as editors themselves treat it.
    """
    if isinstance(change, types.TextDocumentContentChangeWholeDocument):
        return change.text

    def clamped(position: types.Position) -> int:
        try:
            return offset_at(text, position, encoding)
        except PositionError:
            return len(text)

    start, end = clamped(change.range.start), clamped(change.range.end)
    return text[:start] + change.text + text[max(start, end) :]


def position_at(text: str, offset: int, encoding: str) -> types.Position:
    """The LSP position of a string offset, in the negotiated encoding's code units."""
    line = len(LINE_END.findall(text, 0, offset))
    start = line_starts(text)[line]
    return types.Position(line, code_units(text[start:offset], encoding))


def code_units(text: str, encoding: str) -> int:
    units = UNITS_PER_CHAR.get(encoding, UNITS_PER_CHAR["utf-16"])
    return sum(units(char) for char in text)


def reply_range(text: str, offset: int, replaced_chars: int, encoding: str) -> types.Range:
    """The range from the cursor at `offset` over the next `replaced_chars` characters of its line."""
    start = position_at(text, offset, encoding)
    replaced = text[offset : offset + replaced_chars]
    end = types.Position(start.line, start.character + code_units(replaced, encoding))
    return types.Range(start=start, end=end)
