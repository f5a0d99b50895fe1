"""Turn the model's tokens into the suggestion to show: stop decoding, cut, trim, re-indent, fit.

`Finisher` owns "raw tokens so far -> suggestion" for one request: after every generated token
the server asks it whether to stop, and at the end for the suggestion. Every rule is one small
function. The cutting rules each return the index where the suggestion should end (or None);
they run while the model decodes and again on what it generated, then the rules that reshape the
text run, and last the rules that fit it to the code right of the cursor.

Line endings: everything here is LF text. The caller normalises the cursor (`Cursor.normalized`)
and converts the suggestion to the document's line ending; `replace_chars` only covers text on
the cursor's own line, so it is the same in both.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fim_lsp.documents import Cursor, to_lf
from fim_lsp.gate import CLOSING, Mode, before_word, line_around
from fim_lsp.languages import (
    Language,
    Nesting,
    closes_block,
    code_part,
    continues_block,
    language_for,
    opens_block,
    scan,
    unbalanced,
)
from fim_lsp.prompt import CONTROL_TOKENS

TAB_WIDTH = 4  # columns a tab counts for when indentations are compared
CONTEXT_CHARS = 8000  # how much text each side of the cursor the rules look at
SUFFIX_LINES = 3  # non-blank suffix lines the repetition rule compares against
LINE_COPIES = 3  # the same block of lines this many times in a row is a loop
MAX_LOOP_LINES = 3  # longest block of lines checked for loops
TOKEN_COPIES = 8  # the same run of characters this many times in a row is a loop...
TOKEN_RUN_CHARS = 48  # ...when the copies together are at least this long
MAX_UNIT_CHARS = 32  # longest run of characters checked for loops
TOKEN_RUN = re.compile(rf"(.{{2,{MAX_UNIT_CHARS}}}?)\1{{{TOKEN_COPIES - 1},}}", re.DOTALL)
PARTIAL_CHARACTER = "\ufffd"  # what a byte-level decoder gives for a character's first bytes


@dataclass(frozen=True)
class Suggestion:
    text: str  # to insert at the cursor (LF line endings)
    replace_chars: int = 0  # characters right of the cursor (str indices) that `text` replaces


@dataclass(frozen=True)
class Context:
    """What the rules need to know about the cursor, worked out once per request (LF text)."""

    mode: Mode
    language: Language
    left: str  # the cursor's line, left of the cursor
    right: str  # the cursor's line, right of the cursor
    left_nesting: Nesting  # brackets and strings open at the cursor (counted from its line's start)
    # At column 0 of a line with code: the suggestion is whole lines inserted above that code.
    line_start: bool
    # The next non-blank lines after the cursor (at most SUFFIX_LINES of them).
    suffix_lines: tuple[str, ...]
    # Columns: a later line indented less leaves the cursor's block. (The suggestion's own
    # block may differ: see `block_indent`.)
    block_indent: int
    # The lines above the cursor (its own too when it has code left of the cursor), nearest
    # last: where the header of a block is found.
    above: tuple[str, ...]
    expected_indent: int  # columns where code on the cursor's (blank) line belongs
    indent_chars: str  # what the file indents with: "\t" or " ", "" when nothing is indented
    indent_unit: str  # the file's indentation step: "\t", some spaces, or "" when unknown
    blank_lines_indented: bool  # the file's blank lines inside blocks keep their indentation


@dataclass(frozen=True)
class Cut:
    index: int  # where the suggestion ends in the generated text
    rule: Callable[..., int | None]  # the cutting rule that ends it there


class Finisher:
    """Raw tokens so far -> the suggestion, for one request.

    `decode` turns token ids into text (a byte-level BPE tokenizer's decode: a character's bytes
    may be split over tokens). `cursor` has LF line endings. `deadline` is a time.perf_counter()
    value (the maxTimeMs rule): past it, decoding stops at the end of the line being written.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        cursor: Cursor,
        mode: Mode,
        deadline: float | None = None,
    ):
        self.decode = decode
        self.context = context(cursor, mode)
        self.deadline = deadline
        self.raw = ""  # the text of the ids read so far: whole characters only
        self.text = ""  # the same with LF line endings, what the rules read
        self.read_ids = 0  # how many ids `raw` holds the text of
        self.window = 0  # where the ids decoded with the next ones start (the decoder's context)
        self.overtime: int | None = None  # index in `text` where the time budget ran out
        self.stop: Cut | None = None  # where the suggestion ends, once a rule has said so

    def should_stop(self, ids: Sequence[int]) -> bool:
        """Called after every generated token with all the ids generated so far: True = stop.

        Each cutting rule returns the same index on every longer text, so stopping at the
        first cut does not change the suggestion.
        """
        if self.stop is None:
            known = len(self.text)
            if self.read(ids):
                self.stop = self.cut_while_decoding(known)
        return self.stop is not None

    def suggestion(self, ids: Sequence[int]) -> Suggestion | None:
        """The suggestion for the ids generated (those `should_stop` saw, or more), or None
        when nothing useful remains. A character left unfinished by the last token is dropped."""
        for end in range(len(ids), self.read_ids, -1):  # up to the last whole character
            if self.read(ids[:end]):
                break
        ending = self.stop
        text = self.text if ending is None else self.text[: ending.index]
        # What a cut leaves is the whole output as far as the rules are concerned: they may cut
        # it again (the line before the cut may repeat the suffix's line). So the suggestion
        # does not depend on how far decoding ran past the first cut.
        while (cut := earliest_cut(text, self.context, final=True)) and cut.index < len(text):
            ending, text = cut, text[: cut.index]
        # Cut before a line: the suggestion ends with the line above, not with its newline.
        text = text.removesuffix("\n")
        looped = ending is not None and ending.rule is repeated_tokens_cut
        return shape(text, self.context, looped)

    def read(self, ids: Sequence[int]) -> bool:
        """Decode the ids not read yet; False when there are none or they end mid-character."""
        if len(ids) <= self.read_ids:
            return False
        # Decoding a few read ids along with the new ones, and keeping only the text that
        # follows theirs, gives the decoder the context some tokenizers need.
        known = self.decode(list(ids[self.window : self.read_ids]))
        decoded = self.decode(list(ids[self.window :]))
        if decoded.endswith(PARTIAL_CHARACTER) or not decoded.startswith(known):
            return False  # wait for the rest of the character's bytes
        self.raw += decoded[len(known) :]
        self.text = to_lf(self.raw)
        self.window, self.read_ids = self.read_ids, len(ids)
        return True

    def cut_while_decoding(self, new_from: int) -> Cut | None:
        """The first cut in the text read so far; `new_from`: where the text new this time starts."""
        if (
            self.overtime is None
            and self.deadline is not None
            and time.perf_counter() > self.deadline
        ):
            self.overtime = new_from
        cuts = [
            earliest_cut(self.text, self.context, final=False),
            cut_by(time_budget_cut, self.text, self.context, self.overtime),
        ]
        return min((cut for cut in cuts if cut), key=lambda cut: cut.index, default=None)


# ---- context ---------------------------------------------------------------------------------


def context(cursor: Cursor, mode: Mode) -> Context:
    """What the rules need to know about `cursor` (LF line endings)."""
    near = Cursor(cursor.prefix[-CONTEXT_CHARS:], cursor.suffix[:CONTEXT_CHARS], cursor.language_id)
    language = language_for(cursor.language_id)
    left, right = line_around(near)
    # (Glued to a word, the suggestion continues that word instead: not an editor situation,
    # the gate offers nothing there, but the benchmark's random spans do start there.)
    line_start = left == "" and right.strip() != "" and not before_word(right)
    later = near.suffix.split("\n")[0 if line_start else 1 :]
    non_blank = [line for line in later if line.strip()]
    earlier = near.prefix.split("\n")[:-1]
    # The cursor's own line shows how the editor indents, even when it is blank yet.
    lines = [*earlier, *([] if line_start else [left + right]), *later]
    unit = indent_unit(lines, language)
    expected = expected_indent(earlier, language, unit)
    return Context(
        mode=mode,
        language=language,
        left=left,
        right=right,
        left_nesting=scan(left, language).nesting,
        line_start=line_start,
        suffix_lines=tuple(non_blank[:SUFFIX_LINES]),
        block_indent=block_indent_at(left, language),
        above=tuple(earlier + ([left] if left.strip() else [])),
        expected_indent=expected,
        indent_chars=indent_chars(lines),
        indent_unit=unit,
        blank_lines_indented=blank_lines_indented(lines),
    )


def width(indentation: str) -> int:
    return len(indentation.expandtabs(TAB_WIDTH))


def indent_of(line: str) -> int:
    return width(line[: len(line) - len(line.lstrip())])


def indent_chars(lines: list[str]) -> str:
    """What the lines indent with: a tab, a space, or "" when none is indented."""
    tabs = sum(line.startswith("\t") for line in lines)
    spaces = sum(line.startswith(" ") for line in lines)
    return "\t" if tabs > spaces else " " if spaces else ""


def indent_unit(lines: list[str], language: Language) -> str:
    """The file's indentation step: a tab, some spaces, or "" when the lines do not show it."""
    code = [line for line in lines if line.strip()]
    if indent_chars(code) == "\t":
        return "\t"
    return " " * (indentation_step(code, language) or 0)


def blank_lines_indented(lines: list[str]) -> bool:
    """Whether the blank lines inside blocks (before an indented line) mostly keep indentation,
    as some editors leave them; most editors and formatters leave them empty."""
    kept = empty = 0
    for line, after in itertools.pairwise(lines):
        if not line.strip() and after.strip() and indent_of(after) > 0:
            kept += line != ""
            empty += line == ""
    return kept > empty


def indentation_step(lines: list[str], language: Language) -> int | None:
    """The increase in indentation from a block header to the line after it, when all headers
    in `lines` agree on one (continuation lines and docstrings indent by other amounts)."""
    steps = {
        indent_of(after) - indent_of(before)
        for before, after in itertools.pairwise(lines)
        if indent_of(after) > indent_of(before) and opens_block(before, language)
    }
    return steps.pop() if len(steps) == 1 else None


def closable(line: str, language: Language) -> bool:
    """Whether a closing line may end what `line` opens: a brace (or `end`) block, or a bracket
    left open at the end of the line. Indented blocks have no closing line."""
    if code_part(line, language).rstrip().endswith(("(", "[", "{")):
        return True
    return language.block_style == "braces" and opens_block(line, language)


def block_indent_at(left: str, language: Language) -> int:
    """The cursor's block_indent (see `Context`), from the text left of it on its line."""
    if left.strip():
        return indent_of(left) + (1 if opens_block(left, language) else 0)
    return width(left)


def block_header(block: int, ctx: Context) -> str | None:
    """The line that opens the block whose lines are indented `block` columns or more."""
    return next(
        (line for line in reversed(ctx.above) if line.strip() and indent_of(line) < block), None
    )


def expected_indent(earlier: list[str], language: Language, unit: str) -> int:
    """The indentation a statement on a new line after `earlier` gets."""
    previous = next((line for line in reversed(earlier) if line.strip()), "")
    step = width(unit) or 4
    return indent_of(previous) + (step if opens_block(previous, language) else 0)


# ---- cutting rules (while decoding, and on what was generated) ---------------------------------


def earliest_cut(text: str, ctx: Context, final: bool) -> Cut | None:
    """The first index where any cutting rule ends the suggestion, and that rule.

    `final` is True once the output is complete: its last line then counts as a whole line.
    """
    cuts = [
        cut_by(control_token_cut, text),
        cut_by(line_end_cut, text, ctx),
        cut_by(rest_of_line_cut, text, ctx, final),
        cut_by(suffix_repeat_cut, text, ctx, final),
        cut_by(dedent_cut, text, ctx, final),
        cut_by(stop_string_cut, text, ctx),
        cut_by(repeated_lines_cut, text, ctx),
        cut_by(repeated_tokens_cut, text, final),
    ]
    return min((cut for cut in cuts if cut), key=lambda cut: cut.index, default=None)


def cut_by(rule: Callable[..., int | None], *args: object) -> Cut | None:
    index = rule(*args)
    return None if index is None else Cut(index, rule)


def time_budget_cut(text: str, ctx: Context, overtime: int | None) -> int | None:
    """Once the time budget ran out (at index `overtime` of the text), the end of the line
    being written: the first line end after it where the suggestion's brackets are closed."""
    if overtime is None:
        return None
    for match in re.finditer("\n", text[overtime:]):
        end = overtime + match.start()
        found = scan(text[:end], ctx.language, ctx.left_nesting)
        if len(found.nesting) == found.inherited:
            return end
    return None


def control_token_cut(text: str) -> int | None:
    found = [text.find(token) for token in CONTROL_TOKENS]
    return min((index for index in found if index >= 0), default=None)


def line_end_cut(text: str, ctx: Context) -> int | None:
    """Single-line mode ends at the first newline; at a line start it keeps that newline."""
    if ctx.mode is not Mode.SINGLE_LINE or "\n" not in text:
        return None
    return text.index("\n") + (1 if ctx.line_start else 0)


def code_right(ctx: Context) -> str:
    """The code right of the cursor on its line, when there is some (not only closers)."""
    core = ctx.right.strip()
    if ctx.line_start or all(char in CLOSING for char in core):
        return ""
    return core


def rest_of_line_cut(text: str, ctx: Context, final: bool) -> int | None:
    """Where the output reproduces the rest of the cursor's line, ending a line with it.

    In multi-line mode the line after it must go on as the suffix does (or the output or the
    suffix end there): a line of the suggestion's own may end the same way.
    """
    core = code_right(ctx)
    if not core:
        return None
    ending = r"(?=\n|\Z)" if final else r"(?=\n)"
    for match in re.finditer(re.escape(core) + ending, text):
        if ctx.mode is Mode.SINGLE_LINE or goes_on_as_suffix(text[match.end() :], ctx, final):
            return match.start()
    return None


def goes_on_as_suffix(rest: str, ctx: Context, final: bool) -> bool:
    # rest: the output after a reproduced line, from its newline on
    if not ctx.suffix_lines:
        return True
    *complete, _ = rest.split("\n")[1:] + ([""] if final else [])
    following = next((line for line in complete if line.strip()), None)
    if following is None:
        return final
    return same_line(following, ctx.suffix_lines[0])


def whole_lines(text: str, ctx: Context, final: bool) -> list[tuple[int, str]]:
    """The output's complete lines as (index in text where the line starts, the whole line).

    A line that starts at the cursor includes the text left of the cursor, and only counts when
    that text is blank (then the line is the model's own). The unfinished last line only counts
    when `final`.
    """
    lines = []
    start = 0
    for index, piece in enumerate(text.split("\n")):
        end = start + len(piece)
        complete = end < len(text) or final
        if complete and (index > 0 or not ctx.left.strip()):
            lines.append((start, (ctx.left if index == 0 else "") + piece))
        start = end + 1
    return lines


def same_line(a: str, b: str) -> bool:
    return a.strip() == b.strip() and indent_of(a) == indent_of(b)


def suffix_repeat_cut(text: str, ctx: Context, final: bool) -> int | None:
    """Where the output starts reproducing the suffix's next non-blank lines."""
    if not ctx.suffix_lines:
        return None
    lines = [(start, line) for start, line in whole_lines(text, ctx, final) if line.strip()]
    for position, (start, line) in enumerate(lines):
        if not same_line(line, ctx.suffix_lines[0]):
            continue
        after = lines[position:]
        matched = 0
        while matched < min(len(after), len(ctx.suffix_lines)) and same_line(
            after[matched][1], ctx.suffix_lines[matched]
        ):
            matched += 1
        # One line alone is no proof (code repeats lines: `return 0`, `}`, two branches that
        # both append; a middle may begin with the suffix's only line): two in a row are, or
        # the output ending with the suffix's lines.
        if matched >= 2 or (final and matched == len(after)):
            return start
    return None


def dedent_cut(text: str, ctx: Context, final: bool) -> int | None:
    """Multi-line: stop at a line that leaves the suggestion's block (`block_indent`).

    At the level of the block's header, a clause (`else:`) goes on with the block's statement,
    and the block's own closing line (`}`, `end`) is kept when the suffix does not close it
    already.
    """
    if ctx.mode is not Mode.MULTI_LINE:
        return None
    block = block_indent(text, ctx)
    header = block_header(block, ctx)
    header_indent = None if header is None else indent_of(header)
    closer_allowed = header is not None and closable(header, ctx.language)
    for start, line in whole_lines(text, ctx, final):
        if start == 0 or not line.strip() or indent_of(line) >= block:
            continue
        at_header = indent_of(line) == header_indent
        if at_header and continues_block(line, ctx.language):
            continue  # `else:`: the block's statement goes on
        if (
            at_header
            and closer_allowed
            and closes_block(line, ctx.language)
            and not (ctx.suffix_lines and same_line(ctx.suffix_lines[0], line))
        ):
            return start + len(line)
        return start
    return None


def block_indent(text: str, ctx: Context) -> int:
    """Columns: a later line indented less leaves the suggestion's block.

    On a blank line the editor indented, that is the cursor's block. Elsewhere the suggestion's
    own first line of code says where it goes on: at column 0 anywhere; after code where
    indentation makes blocks, further out than the cursor's block (after a `return`; braces
    leave a block with a closing line, which `dedent_cut` judges). But from inside a block, a
    line at the outer level always leaves. (`leaves_suffix_indented` checks that the code after
    the cursor may still follow the suggestion.)
    """
    braces_after_code = bool(ctx.left.strip()) and ctx.language.block_style != "indent"
    if braces_after_code or (ctx.left and not ctx.left.strip()):
        return ctx.block_indent
    pieces = text.split("\n")
    own = pieces[1:] if ctx.left else pieces  # after code: the lines after the cursor's
    first = next((indent_of(line) for line in own if line.strip()), None)
    if first is None:
        return ctx.block_indent
    if not ctx.left:
        return min(first, 1)
    return max(min(first, ctx.block_indent), min(ctx.block_indent, 1))


def stop_string_cut(text: str, ctx: Context) -> int | None:
    """Multi-line: stop where a new top-level definition begins (after the suggestion's start)."""
    if ctx.mode is not Mode.MULTI_LINE:
        return None
    begins = len(text) - len(text.lstrip())
    found = [text.find(stop, begins) for stop in ctx.language.stop_strings]
    return min((index + 1 for index in found if index >= 0), default=None)


def repeated_lines_cut(text: str, ctx: Context) -> int | None:
    """Keep one copy of a block of lines that the output repeats LINE_COPIES times in a row.

    The first line is the cursor's line: a loop may start with it whole (with the indentation
    or code left of the cursor) or with the model's part of it alone.
    """
    pieces = text.split("\n")[:-1]  # complete lines only
    if not pieces:
        return None
    starts = list(itertools.accumulate((len(piece) + 1 for piece in pieces), initial=0))
    firsts = {ctx.left + pieces[0], pieces[0]}
    cuts = [loop_of_lines([first, *pieces[1:]]) for first in firsts]
    return min((starts[cut] for cut in cuts if cut is not None), default=None)


def loop_of_lines(lines: list[str]) -> int | None:
    """The number of the line after the first copy of a block repeated LINE_COPIES times."""
    cuts = []
    for size in range(1, MAX_LOOP_LINES + 1):
        same = 0  # lines from `index` on that equal the line `size` further down
        for index in range(len(lines) - size - 1, -1, -1):
            same = same + 1 if lines[index] == lines[index + size] else 0
            block = lines[index : index + size]
            if same >= (LINE_COPIES - 1) * size and any(line.strip() for line in block):
                cuts.append(index + size)
    return min(cuts, default=None)


def repeated_tokens_cut(text: str, final: bool) -> int | None:
    """Keep one copy of a run of characters repeated again and again (`foo(foo(foo(...`).

    While decoding (`final` False) only the end of the text is searched: called after every
    token, a run is seen as soon as it is long enough, and scanning all the text each time
    would cost more than a decode step.
    """
    if not final:
        return token_loop_at_end(text)
    for match in TOKEN_RUN.finditer(text):
        if len(match.group()) >= TOKEN_RUN_CHARS and loop_unit(match.group(1)):
            return match.start() + len(match.group(1))
    return None


def loop_unit(unit: str) -> bool:
    # Whitespace (indentation) and one character over and over (`=====` rulers) are no loop.
    return bool(unit.strip()) and len(set(unit)) > 1


def token_loop_at_end(text: str) -> int | None:
    for size in range(2, MAX_UNIT_CHARS + 1):
        span = size * max(TOKEN_COPIES, -(-TOKEN_RUN_CHARS // size))
        if len(text) < span:
            return None  # longer units need even more text
        unit = text[-size:]
        if text[-span:] == unit * (span // size) and loop_unit(unit):
            start = len(text) - span
            while start > 0 and text[start - 1] == text[start - 1 + size]:
                start -= 1
            return start + size
    return None


# ---- reshaping rules ------------------------------------------------------------------------


def shape(text: str, ctx: Context, looped: bool) -> Suggestion | None:
    """The suggestion made of the generated text that the cutting rules kept (`looped`: a loop
    of tokens was cut, mid-line)."""
    text = first_line_indent(text, ctx)
    text = normalise_indentation(text, ctx)
    text = empty_blank_lines(text, ctx)
    if looped:
        text = drop_unfinished_line(text, ctx)
    text = trim_end(text, ctx)
    if not text.strip() or not leaves_suffix_indented(text, ctx):
        return None
    return fit_to_line(text, ctx)


def first_line_indent(text: str, ctx: Context) -> str:
    """Drop whitespace the model puts before its first line where the line already has enough.

    Left of the cursor there is whitespace (`x = |`, or the indentation of a blank line);
    models often repeat it.
    """
    if not ctx.left or not ctx.left[-1].isspace():
        return text
    body = text.lstrip(" \t")
    lead = text[: len(text) - len(body)]
    if ctx.left.strip():
        return body
    missing = max(0, ctx.expected_indent - width(ctx.left))
    return lead[:missing] + body if width(lead) > missing else text


def normalise_indentation(text: str, ctx: Context) -> str:
    """Re-indent the model's lines in the file's style: tabs or spaces, and the step width.

    A file that indents nothing yet shows no style: the language's convention applies (gofmt's
    tabs), or where it has none the model's own indentation stays.
    """
    lines = text.split("\n")
    first = 0 if ctx.left == "" else 1  # a line that starts mid-line keeps its spacing
    owned = [line for line in lines[first:] if line.strip()]
    chars = ctx.indent_chars or ctx.language.indentation[:1]
    reindent: Callable[[str], str]
    if chars == "\t":
        reindent = spaces_to_tabs
    elif not chars:
        return text  # no style to follow
    elif any(line.startswith("\t") for line in owned):
        step = width(ctx.indent_unit or ctx.language.indentation) or 4
        reindent = functools.partial(tabs_to_spaces, step=step)
    else:
        reindent = rescale(owned, ctx)
    return "\n".join(lines[:first] + [reindent(line) for line in lines[first:]])


def spaces_to_tabs(line: str) -> str:
    body = line.lstrip(" \t")
    columns = width(line[: len(line) - len(body)])
    return "\t" * (columns // TAB_WIDTH) + " " * (columns % TAB_WIDTH) + body


def tabs_to_spaces(line: str, step: int) -> str:
    body = line.lstrip("\t")
    return " " * step * (len(line) - len(body)) + body


def rescale(owned: list[str], ctx: Context) -> Callable[[str], str]:
    """Space indentation in the model's step width -> the file's, relative to the cursor's block.

    Left as is when either step cannot be told, when some line does not sit on the model's step
    (alignment), when the suggestion ends in a block header (the body after it is already in
    the document, indented to match the model's layout), or when a line would move to the other
    side of the suffix's next line (deeper, level or shallower): the code after the suggestion
    must still follow it the way the model meant.
    """
    anchor = [ctx.left] if ctx.left.strip() else []
    base = indent_of(ctx.left) if ctx.left.strip() else ctx.expected_indent
    model_step = indentation_step(anchor + owned, ctx.language)
    file_step = width(ctx.indent_unit)
    if (
        model_step is None
        or not file_step
        or model_step == file_step
        or opens_block(owned[-1], ctx.language)
        or any((indent_of(line) - base) % model_step for line in owned if indent_of(line) > base)
    ):
        return str

    def depth(line: str) -> int:
        old = indent_of(line)
        return old if old <= base else base + (old - base) // model_step * file_step

    def reindent(line: str) -> str:
        return line if not line.strip() else " " * depth(line) + line.lstrip()

    if ctx.suffix_lines:
        following = indent_of(ctx.suffix_lines[0])
        side = [((indent_of(line) > following) - (indent_of(line) < following)) for line in owned]
        if side != [((depth(line) > following) - (depth(line) < following)) for line in owned]:
            return str
    return reindent


def empty_blank_lines(text: str, ctx: Context) -> str:
    """Lines of only spaces inside the suggestion become empty, as formatters and most editors
    leave blank lines, unless the file keeps its own blank lines indented.

    Its first line continues the cursor's line and its last one may carry the indentation of
    the code right of the cursor: both stay.
    """
    lines = text.split("\n")
    if ctx.blank_lines_indented or len(lines) < 3:
        return text
    inside = ["" if not line.strip() else line for line in lines[1:-1]]
    return "\n".join([lines[0], *inside, lines[-1]])


def drop_unfinished_line(text: str, ctx: Context) -> str:
    """After a loop of tokens was cut: drop the last line when it leaves a bracket or string
    open that it opened itself (`decode(s, 'ascii'`); on the cursor's line that is everything."""
    found = scan(text, ctx.language, ctx.left_nesting)
    last_line = text.rfind("\n") + 1
    if any(frame.start >= last_line for frame in found.nesting[found.inherited :]):
        return text[: max(0, last_line - 1)]
    return text


def leaves_suffix_indented(text: str, ctx: Context) -> bool:
    """Where indentation makes blocks: whether the code after the cursor may still follow the
    suggestion. A next line deeper than the suggestion's last one needs a block header there
    (or an open bracket) to hang from."""
    if ctx.language.block_style != "indent" or not ctx.suffix_lines or code_right(ctx):
        return True
    rest_of_line = "" if ctx.line_start else ctx.right  # at a line start: the suffix's line
    lines = [line for line in (ctx.left + text + rest_of_line).split("\n") if line.strip()]
    if not lines or indent_of(ctx.suffix_lines[0]) <= indent_of(lines[-1]):
        return True
    return opens_block(lines[-1], ctx.language) or bool(scan(text, ctx.language).nesting)


def trim_end(text: str, ctx: Context) -> str:
    """No trailing blank lines or spaces, except where the code right of the cursor needs them.

    At a line start the suggestion is whole lines ending in one newline. Before code, a
    trailing newline (and indentation) moves that code to a line of its own, and a trailing
    space separates it from the suggestion unless it brings its own.
    """
    if ctx.line_start:
        stripped = text.rstrip()
        return stripped + "\n" if stripped else ""
    if code_right(ctx):
        return text.rstrip(" \t") if ctx.right[0].isspace() else text
    return text.rstrip()


# ---- fitting rules: the suggestion and the rest of the cursor's line ---------------------------


def fit_to_line(text: str, ctx: Context) -> Suggestion | None:
    """The suggestion, joined to what is right of the cursor on its line."""
    if ctx.line_start:
        return Suggestion(text)  # whole lines, inserted above the code
    if code_right(ctx):
        return fit_before_code(text, ctx)
    replaced = closing_overlap(text, ctx)
    if text == ctx.right[:replaced]:
        return None  # it only retypes the closers already there
    return Suggestion(text, replaced)


def unbalanced_with(ctx: Context, text: str, replaced: int = 0) -> int:
    """How unbalanced the cursor's line is with `text` in it, over `replaced` characters."""
    return unbalanced(ctx.left + text + ctx.right[replaced:], ctx.language)


def closing_overlap(text: str, ctx: Context) -> int:
    """How many characters right of the cursor the suggestion overwrites, when that rest of the
    line is only closers (an auto-closed `)`, `"]`, `);`, `}")`).

    The suggestion replaces closers it types itself instead of leaving a duplicate: of the
    starts of the rest of the line that it types (in order; punctuation like `;` only from where
    it first closes what was open at the cursor, or at its very end), the longest of those that
    leave the line least unbalanced (an outer call keeps its `)`).
    """
    right = ctx.right.rstrip()
    if ctx.line_start or not right.strip() or code_right(ctx):
        return 0
    typed = [
        count
        for count in range(len(right), 0, -1)
        if not right[count - 1].isspace() and types_in_order(text, right[:count], ctx)
    ]
    return min([*typed, 0], key=lambda count: unbalanced_with(ctx, text, count))


def types_in_order(text: str, closers: str, ctx: Context) -> bool:
    """Whether `text` types the (non-space) characters of `closers` in order."""
    closes = scan(text, ctx.language, ctx.left_nesting).closes_outer
    punctuation_from = closes[0] if closes else len(text.rstrip(";,.:"))
    position = 0
    for char in closers.replace(" ", "").replace("\t", ""):
        start = max(position, punctuation_from) if char in ";,.:" else position
        position = text.find(char, start) + 1
        if position == 0:
            return False
    return True


def fit_before_code(text: str, ctx: Context) -> Suggestion | None:
    """Mid-line, before code: the first way of joining the suggestion to that code that leaves
    the line least unbalanced, and no more than it is now; else nothing.

    The ways, in order: insert it (nothing of the user's code is lost); cut it at its first
    closer when the code starts with that closer (`isValid(user` before `)) {`); let it replace
    the rest of the line, which it rewrote.
    """
    ways = [Suggestion(text)]
    closes = scan(text, ctx.language, ctx.left_nesting).closes_outer
    if closes and text[closes[0]] == ctx.right.lstrip()[:1]:
        head = text[: closes[0]]
        head = head.rstrip(" \t") if ctx.right[0].isspace() else head
        if head.strip():
            ways.append(Suggestion(head))
    if text.strip() != ctx.right.strip():
        ways.append(Suggestion(text, len(ctx.right)))

    def score(way: Suggestion) -> int:
        return unbalanced_with(ctx, way.text, way.replace_chars)

    best = min(ways, key=score)  # the first of the least unbalanced
    return best if score(best) <= unbalanced_with(ctx, "") else None
