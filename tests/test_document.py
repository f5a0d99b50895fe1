"""LSP positions in each encoding, CRLF and emoji before the cursor, and reply ranges."""

from __future__ import annotations

import pytest
from lsprotocol import types

from fim_lsp.document import (
    Cursor,
    PositionError,
    apply_change,
    offset_at,
    position_at,
    reply_range,
)

TEXT = 'a = "👋é"\r\nb = 1\rc = 2\nlast'
# Offsets of the closing quote on line 0: after a, space, =, space, ", 👋, é.
QUOTE = 7


@pytest.mark.parametrize("encoding, character", [("utf-32", 7), ("utf-16", 8), ("utf-8", 11)])
def test_positions_after_an_emoji_in_each_encoding(encoding, character):
    assert offset_at(TEXT, types.Position(0, character), encoding) == QUOTE
    assert position_at(TEXT, QUOTE, encoding) == types.Position(0, character)


@pytest.mark.parametrize(
    "line, offset", [(1, TEXT.index("b")), (2, TEXT.index("c")), (3, TEXT.index("last"))]
)
def test_crlf_cr_and_lf_each_end_a_line(line, offset):
    assert offset_at(TEXT, types.Position(line, 0), "utf-16") == offset
    assert position_at(TEXT, offset, "utf-16") == types.Position(line, 0)


def test_form_feed_does_not_end_a_line():
    text = "x = 1\n\x0c\ny = 2"
    assert offset_at(text, types.Position(2, 0), "utf-16") == text.index("y")


def test_character_past_the_end_of_a_line_means_its_end():
    assert offset_at(TEXT, types.Position(1, 99), "utf-16") == TEXT.index("\r", 10)
    assert offset_at(TEXT, types.Position(3, 99), "utf-16") == len(TEXT)


@pytest.mark.parametrize("line", [4, 1000])
def test_lines_past_the_document_are_errors(line):
    with pytest.raises(PositionError):
        offset_at(TEXT, types.Position(line, 0), "utf-16")


def test_reply_range_covers_replaced_characters_in_client_units():
    text = 'print("👋")'
    cursor = text.index('"') + 1
    where = reply_range(text, cursor, 3, "utf-16")  # 👋") is 2 + 1 + 1 units
    assert where == types.Range(types.Position(0, 7), types.Position(0, 11))
    assert reply_range(text, cursor, 3, "utf-8").end == types.Position(0, 7 + 6)


def test_cursor_normalises_line_endings_and_remembers_them():
    cursor = Cursor("a\r\nb", "\r\nc", "python")
    assert cursor.line_ending == "\r\n"
    assert cursor.normalized() == Cursor("a\nb", "\nc", "python")
    assert Cursor("x", "").line_ending == "\n"


def edit(start: tuple[int, int], end: tuple[int, int], text: str):
    return types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text
    )


@pytest.mark.parametrize(
    "before, change, after",
    [
        # A form feed (a page break) is not a line end: line 1 is "c", not "b\n".
        ("a\fb\nc\n", edit((1, 0), (1, 0), "X"), "a\fb\nXc\n"),
        ("a\u2028b\r\nc", edit((1, 1), (1, 1), "d"), "a\u2028b\r\ncd"),
        # A replacement across a CRLF line end, and a deletion of it.
        ("ab\r\ncd", edit((0, 1), (1, 1), "X"), "aXd"),
        ("ab\r\ncd", edit((0, 2), (1, 0), ""), "abcd"),
        # utf-16 code units: the emoji is two.
        ("\U0001f44b=1\n", edit((0, 2), (0, 3), "+"), "\U0001f44b+1\n"),
        # Past the end of a line, or of the document: its end.
        ("ab\ncd", edit((0, 9), (0, 9), "!"), "ab!\ncd"),
        ("ab\ncd", edit((7, 0), (7, 0), "\nef"), "ab\ncd\nef"),
        ("old", types.TextDocumentContentChangeWholeDocument(text="new"), "new"),
    ],
)
def test_changes_apply_at_lsp_positions(before, change, after):
    assert apply_change(before, change, "utf-16") == after


def test_changes_count_in_the_negotiated_encoding():
    text = "é=1\n"  # é: one utf-16 unit, two utf-8 bytes
    assert apply_change(text, edit((0, 2), (0, 3), "+"), "utf-8") == "é+1\n"
    assert apply_change(text, edit((0, 1), (0, 2), "+"), "utf-16") == "é+1\n"
