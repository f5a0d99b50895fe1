"""The open documents: edits applied once, at LSP line ends; positions in the negotiated encoding.

A document is kept as its lines, each with its own line ending, so that an edit costs time in
proportion to the lines it touches, not to the document: a keystroke at the end of a 10 MB file
splices one line. Lines end at `\\n`, `\\r\\n` or `\\r` only, as LSP says (`str.splitlines` also
splits at form feeds and other characters, which put edits after them on the wrong line).

Positions arrive in the encoding negotiated at `initialize` (utf-16 unless the client offered
another): they are turned into string indices here, once, and replies are turned back here too.
A character past the end of its line means the end of the line; a line past the end of the
document means its end for an edit (as editors treat it) and is an error for a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lsprotocol import types

LINE_END = re.compile(r"\r\n|\r|\n")

# Past this size a document is most likely generated or binary; completing in it helps nobody.
MAX_DOCUMENT_CHARS = 8_000_000
# Characters of text each side of the cursor that a request snapshots: more than any prompt
# reads (the prompt budget caps both sides far below this: at most 32 characters per token).
WINDOW_CHARS = 32 * 4096

CODECS = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2)}  # codec, bytes per code unit


class PositionError(ValueError):
    """A position that does not exist in the document."""


def split_lines(text: str) -> list[str]:
    """`text` as lines that keep their line endings; the last one has none (it may be "")."""
    lines, pending = [], ""
    for piece in text.splitlines(keepends=True):  # in C; it also splits at \f, \x1c, \u2028...
        if piece.endswith(("\n", "\r")):
            lines.append(pending + piece)
            pending = ""
        else:  # ...which LSP does not count: the line goes on
            pending += piece
    return [*lines, pending]


def content(line: str) -> str:
    """A line without its line ending."""
    return line.rstrip("\r\n")


def to_lf(text: str) -> str:
    return LINE_END.sub("\n", text)


def char_index(line: str, units: int, encoding: str) -> int:
    """The index in `line` (no line ending) of a column counted in `encoding`'s code units;
    past the end means the end. A column inside a character lands before it."""
    if encoding not in CODECS or line.isascii():  # utf-32: a code unit is a character
        return min(units, len(line))
    codec, width = CODECS[encoding]
    data = line.encode(codec, "surrogatepass")  # lone surrogates round-trip (JSON allows them)
    cut = min(units * width, len(data))
    if encoding == "utf-8":
        while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # a continuation byte
            cut -= 1
    elif 0 < cut < len(data) and 0xDC <= data[cut + 1] <= 0xDF and 0xD8 <= data[cut - 1] <= 0xDB:
        cut -= 2  # between the halves of a surrogate pair
    return len(data[:cut].decode(codec, "surrogatepass"))


def code_units(text: str, encoding: str) -> int:
    """The length of `text` in `encoding`'s code units."""
    if encoding not in CODECS or text.isascii():
        return len(text)
    codec, width = CODECS[encoding]
    return len(text.encode(codec, "surrogatepass")) // width


@dataclass(frozen=True)
class Cursor:
    """The text around the cursor: all of it, or a window of whole lines around it."""

    prefix: str  # text before the cursor (line endings as in the document)
    suffix: str  # text after the cursor
    language_id: str = ""  # LSP languageId, e.g. "python"
    # The document's line number where `prefix` starts (not 0 when it is a window): the prompt
    # cuts the prefix at chunks of lines counted from the top of the file.
    first_line: int = 0

    @property
    def line_ending(self) -> str:
        """The document's line ending: the first one found, LF when there is none."""
        match = LINE_END.search(self.prefix) or LINE_END.search(self.suffix)
        return match.group() if match else "\n"

    def normalized(self) -> Cursor:
        """The same cursor with LF line endings, as the model saw code in training."""
        return Cursor(to_lf(self.prefix), to_lf(self.suffix), self.language_id, self.first_line)


@dataclass(frozen=True)
class Place:
    """A position as a line number and a character index in that line (string indices)."""

    line: int
    index: int


class Document:
    """One open document as lines with their endings, with the counts a request checks."""

    def __init__(self, text: str, language_id: str = "", version: int = 0):
        self.language_id = language_id
        self.version = version
        self.lines = split_lines(text)
        self.chars = len(text)
        self.nuls = text.count("\x00")

    @property
    def text(self) -> str:
        """The whole text (costs a copy of the document: for tests and tools)."""
        return "".join(self.lines)

    def unsuitable(self) -> str | None:
        """Why the document gets no completions at all, or None."""
        if self.chars > MAX_DOCUMENT_CHARS:
            return f"the document is over {MAX_DOCUMENT_CHARS:,} characters"
        if self.nuls:
            return "the document looks binary (it contains NUL characters)"
        return None

    # ---- positions -------------------------------------------------------------------------

    def place(self, position: types.Position, encoding: str) -> Place:
        """The line and string index of a request's position; PositionError past the end."""
        if position.line >= len(self.lines):  # lsprotocol already refuses negative numbers
            raise PositionError(
                f"position {position.line}:{position.character} is outside the document "
                f"({len(self.lines)} lines)"
            )
        line = content(self.lines[position.line])
        return Place(position.line, char_index(line, position.character, encoding))

    def position(self, place: Place, encoding: str) -> types.Position:
        """The LSP position of a line and string index, in `encoding`'s code units."""
        line = self.lines[place.line]
        return types.Position(place.line, code_units(line[: place.index], encoding))

    def edit_place(self, position: types.Position, encoding: str) -> Place:
        """Like `place`, but past the end of the document means its end (for edits)."""
        if position.line >= len(self.lines):
            last = len(self.lines) - 1
            return Place(last, len(self.lines[last]))
        return self.place(position, encoding)

    # ---- edits -----------------------------------------------------------------------------

    def apply(self, change: types.TextDocumentContentChangeEvent, encoding: str) -> None:
        """Apply one change of a didChange notification (in order: each on the text the last
        one left)."""
        if isinstance(change, types.TextDocumentContentChangeWholeDocument):
            self.lines = split_lines(change.text)
            self.chars, self.nuls = len(change.text), change.text.count("\x00")
            return
        start = self.edit_place(change.range.start, encoding)
        end = self.edit_place(change.range.end, encoding)
        if (end.line, end.index) < (start.line, start.index):
            start, end = end, start
        old = self.lines[start.line : end.line + 1]
        head = old[0][: start.index]  # no line end inside
        tail = old[-1][end.index :]  # the end line's rest, with its line end
        if self.nuls:  # (the removed text is only put together when it may hold a NUL)
            joined = "".join(old)
            self.nuls -= joined[len(head) : len(joined) - len(tail)].count("\x00")
        self.nuls += change.text.count("\x00")
        self.chars += len(change.text) - (sum(map(len, old)) - len(head) - len(tail))
        # Only the inserted text is split: the untouched parts of both lines hold no line end.
        lines = split_lines(change.text)
        lines[0] = head + lines[0]
        lines[-1] += tail
        # "\r" then "\n" is one line end: where the edit puts them side by side, they join (the
        # line that held the "\n" is then that "\n" alone, and goes).
        for at in range(len(lines) - 1, 0, -1):
            if lines[at - 1].endswith("\r") and lines[at] == "\n":
                lines[at - 1] += "\n"
                del lines[at]
        first = start.line
        if first > 0 and self.lines[first - 1].endswith("\r") and lines[0] == "\n":
            first -= 1
            lines[0] = self.lines[first] + "\n"
        self.lines[first : end.line + 1] = lines

    # ---- snapshots -------------------------------------------------------------------------

    def cursor(self, place: Place, window: int = WINDOW_CHARS) -> Cursor:
        """The text around `place`: whole lines while they fit in about `window` characters each
        side (the cursor's own line cut to `window` characters each side)."""
        line = self.lines[place.line]
        left, right = line[: place.index][-window:], line[place.index :][:window]
        above = self.gather(range(place.line - 1, -1, -1), window - len(left))
        below = self.gather(range(place.line + 1, len(self.lines)), window - len(right))
        return Cursor(
            "".join(reversed(above)) + left,
            right + "".join(below),
            self.language_id,
            first_line=place.line - len(above),
        )

    def gather(self, numbers: range, room: int) -> list[str]:
        """Lines taken in `numbers`' order until they fill `room` characters."""
        taken: list[str] = []
        for number in numbers:
            if room <= 0:
                break
            taken.append(self.lines[number])
            room -= len(self.lines[number])
        return taken


def line_range(number: int, line: str, start: int, end: int, encoding: str) -> types.Range:
    """The LSP range of `line[start:end]` on line `number`, in `encoding`'s code units."""
    first = code_units(line[:start], encoding)
    return types.Range(
        types.Position(number, first),
        types.Position(number, first + code_units(line[start:end], encoding)),
    )
