"""Open documents: positions in each encoding, edits at LSP line ends, windows around the cursor."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lsprotocol import types

from fim_lsp.documents import (
    Cursor,
    Document,
    Place,
    PositionError,
    char_index,
    code_units,
    split_lines,
)

TEXT = 'a = "👋é"\r\nb = 1\rc = 2\nlast'
QUOTE = 7  # the closing quote on line 0: after a, space, =, space, ", 👋, é
ENCODINGS = ("utf-8", "utf-16", "utf-32")


def partial(start: tuple[int, int], end: tuple[int, int], text: str):
    return types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text
    )


# ---- a reference implementation of LSP edits: whole strings, one character at a time ----------


def reference_offset(text: str, position: types.Position, encoding: str) -> int:
    """Character offset of an edit position: lines past the end mean the end of the text, a
    character past the end of its line the end of that line (the LSP spec)."""
    starts = [0]
    index = 0
    while index < len(text):
        if text[index] == "\r" and text[index + 1 : index + 2] == "\n":
            index += 2
            starts.append(index)
            continue
        index += 1
        if text[index - 1] in "\r\n":
            starts.append(index)
    if position.line >= len(starts):
        return len(text)
    offset = starts[position.line]
    units = 0
    while offset < len(text) and text[offset] not in "\r\n":
        char = text[offset]
        width = {"utf-32": 1, "utf-16": 2 if ord(char) > 0xFFFF else 1}.get(
            encoding, len(char.encode("utf-8", "surrogatepass"))
        )
        if units + width > position.character:
            break
        units += width
        offset += 1
    return offset


def reference_apply(text: str, change, encoding: str) -> str:
    start = reference_offset(text, change.range.start, encoding)
    end = reference_offset(text, change.range.end, encoding)
    start, end = min(start, end), max(start, end)
    return text[:start] + change.text + text[end:]


# ---- positions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, character", [("utf-32", 7), ("utf-16", 8), ("utf-8", 11)])
def test_positions_after_an_emoji_in_each_encoding(encoding, character):
    document = Document(TEXT)
    assert document.place(types.Position(0, character), encoding) == Place(0, QUOTE)
    assert document.position(Place(0, QUOTE), encoding) == types.Position(0, character)


def test_crlf_cr_and_lf_each_end_a_line_and_form_feeds_do_not():
    assert split_lines(TEXT) == ['a = "👋é"\r\n', "b = 1\r", "c = 2\n", "last"]
    assert split_lines("x = 1\n\x0c\ny = 2") == ["x = 1\n", "\x0c\n", "y = 2"]
    assert split_lines("") == [""]
    assert split_lines("a\n") == ["a\n", ""]


def test_character_past_the_end_of_a_line_means_its_end():
    document = Document(TEXT)
    assert document.place(types.Position(1, 99), "utf-16") == Place(1, 5)
    assert document.place(types.Position(3, 99), "utf-16") == Place(3, 4)


@pytest.mark.parametrize("line", [4, 1000])
def test_request_lines_past_the_document_are_errors(line):
    with pytest.raises(PositionError):
        Document(TEXT).place(types.Position(line, 0), "utf-16")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_column_inside_a_character_lands_before_it(encoding):
    line = "x👋y"  # 👋: 2 utf-16 units, 4 utf-8 bytes
    inside = {"utf-8": 3, "utf-16": 2, "utf-32": 1}[encoding]
    assert char_index(line, inside, encoding) == 1
    assert code_units(line, encoding) == {"utf-8": 6, "utf-16": 4, "utf-32": 3}[encoding]


def test_lone_surrogates_count_as_one_utf16_unit():
    line = "a\ud800b"  # JSON can carry a lone surrogate; it is one unit, three utf-8 bytes
    assert char_index(line, 2, "utf-16") == 2
    assert code_units(line, "utf-8") == 5


# ---- edits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, changes, expected",
    [
        ("abc", [partial((0, 10), (0, 10), "X")], "abcX"),  # past the end of the last line
        ("abc\ndef", [partial((0, 10), (0, 10), "X")], "abcX\ndef"),
        ("abc", [partial((0, 10), (0, 10), "X"), partial((0, 1), (0, 2), "")], "acX"),
        ("abc\ndef", [partial((0, 2), (5, 0), "X")], "abX"),  # a line past the end: the end
        ("a\r", [partial((1, 0), (1, 0), "\nb")], "a\r\nb"),  # "\r" + "\n" join into one end
        ("a\r\nb", [partial((0, 1), (0, 1), "x")], "ax\r\nb"),
        ("a\rx\nb", [partial((1, 0), (1, 1), "")], "a\r\nb"),  # deleting joins two line ends
    ],
)
def test_edits_match_the_lsp_spec(text, changes, expected):
    document = Document(text)
    for change in changes:
        document.apply(change, "utf-16")
    assert document.text == expected
    assert document.lines == split_lines(expected)
    assert document.chars == len(expected)


PIECES = st.sampled_from(["a", "é", "👋", "\r", "\n", "\r\n", "\x0c", " ", "\x00", "\ud800"])
TEXTS = st.lists(PIECES, max_size=24).map("".join)
NUMBERS = st.integers(min_value=0, max_value=9)
CHANGES = st.tuples(NUMBERS, NUMBERS, NUMBERS, NUMBERS, TEXTS)


@settings(max_examples=600, deadline=None)
@given(
    text=TEXTS,
    changes=st.lists(CHANGES, min_size=1, max_size=6),
    encoding=st.sampled_from(ENCODINGS),
)
def test_edits_equal_the_reference_implementation(text, changes, encoding):
    """No edit sequence corrupts a document: every one lands where the reference puts it."""
    document = Document(text)
    expected = text
    for l1, c1, l2, c2, new in changes:
        change = partial((l1, c1), (l2, c2), new)
        document.apply(change, encoding)
        expected = reference_apply(expected, change, encoding)
        assert document.text == expected
    assert document.lines == split_lines(expected)
    assert (document.chars, document.nuls) == (len(expected), expected.count("\x00"))


def test_whole_document_changes_replace_the_text():
    document = Document("old\x00")
    document.apply(types.TextDocumentContentChangeWholeDocument(text="new\r\ntext"), "utf-16")
    assert document.lines == ["new\r\n", "text"]
    assert document.unsuitable() is None


def test_binary_and_huge_documents_are_unsuitable():
    assert "binary" in (Document("a\x00b").unsuitable() or "")
    document = Document("x")
    document.apply(partial((0, 1), (0, 1), "y" * 8_000_001), "utf-16")
    assert "over" in (document.unsuitable() or "")


@pytest.mark.parametrize(
    "text",
    ["x" * 1_000_000 + "\n", "line of code\n" * 100_000, ("é👋" * 100 + "\n") * 10_000],
)
def test_a_keystroke_costs_what_it_touches_not_the_document(text):
    document = Document(text)
    started = time.perf_counter()
    for column in range(100):  # typing at the end of the first line, then a request's snapshot
        document.apply(partial((0, 10**6 + column), (0, 10**6 + column), "z"), "utf-16")
        document.cursor(document.place(types.Position(0, 10**6), "utf-16"), window=4096)
    per_key = (time.perf_counter() - started) / 100
    assert per_key < 0.005, f"{per_key * 1000:.1f} ms per keystroke"  # was 250-920 ms (#20)


# ---- the window around the cursor ----------------------------------------------------------------


def test_cursor_is_the_whole_text_when_it_is_small():
    document = Document("one\ntwo\nthree", "python")
    cursor = document.cursor(Place(1, 1))
    assert cursor == Cursor("one\nt", "wo\nthree", "python", first_line=0)


def test_cursor_window_is_whole_lines_and_knows_its_first_line():
    document = Document("".join(f"line {n:03}\n" for n in range(100)))
    cursor = document.cursor(Place(50, 4), window=30)
    assert cursor.prefix.startswith("line ") and cursor.suffix.endswith("\n")
    assert cursor.first_line == 50 - cursor.prefix.count("\n")
    assert cursor.prefix.endswith("line")
    assert 30 <= len(cursor.prefix) < 30 + 9 and 30 <= len(cursor.suffix) < 30 + 9


def test_cursor_normalises_line_endings_and_remembers_them():
    cursor = Cursor("a\r\nb", "\r\nc", "python", first_line=3)
    assert cursor.line_ending == "\r\n"
    assert cursor.normalized() == Cursor("a\nb", "\nc", "python", first_line=3)
    assert Cursor("x", "y").line_ending == "\n"
