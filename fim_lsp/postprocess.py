"""Turn raw model output into the suggestion to show: cut, trim, re-indent, overwrite closers.

Every rule is one small function. The cutting rules each return the index where the suggestion
should end (or None); `stop_index` runs them while the model decodes, `clean` runs the same ones
on the finished output and then the rules that reshape the text.

Line endings: the rules work on LF text (model output is LF; the cursor is normalised with
`Cursor.normalized`). `clean` converts the suggestion to the document's line ending last.
`replace_chars` only ever covers text on the cursor's own line, so it is the same in both.
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
    closes_block,
    code_part,
    language_for,
    open_quote,
    opens_block,
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


@dataclass(frozen=True)
class Suggestion:
    text: str  # to insert at the cursor
    replace_chars: int = 0  # characters right of the cursor (str indices) that `text` replaces


@dataclass(frozen=True)
class Context:
    """What the rules need to know about the cursor, worked out once per request (LF text)."""

    mode: Mode
    language: Language
    left: str  # the cursor's line, left of the cursor
    right: str  # the cursor's line, right of the cursor
    # At column 0 of a line with code: the suggestion is whole lines inserted above that code.
    line_start: bool
    # The next non-blank lines after the cursor (at most SUFFIX_LINES of them).
    suffix_lines: tuple[str, ...]
    suffix_ends: bool  # True when the suffix has no non-blank lines beyond `suffix_lines`
    block_indent: int  # columns: a later line indented less leaves the cursor's block
    closer_indent: int | None  # columns of the block's header, where its closing line may go
    expected_indent: int  # columns where code on the cursor's (blank) line belongs
    indent_unit: str  # the file's indentation step: "\t", some spaces, or "" when unknown


def stop_index(generated: str, cursor: Cursor, mode: Mode) -> int | None:
    """Where the suggestion is complete in the text generated so far, or None to keep generating.

    Call it after each decoded token with all the text decoded so far (LF line endings, as the
    model writes them); stop at the first index returned and drop the text after it. Each rule
    returns the same index on every longer text, so stopping early does not change what `clean`
    makes of the output. Loops of characters are only looked for at the end of the text, which
    is enough when every shorter text was seen before.
    """
    return earliest_cut(generated, context(cursor, mode), final=False)


def clean(raw: str, cursor: Cursor, mode: Mode) -> Suggestion | None:
    """The suggestion to show for the model's output `raw`, or None when nothing useful remains.

    The text comes back with the line endings of the cursor's document (`cursor.line_ending`).
    """
    ctx = context(cursor, mode)
    text = to_lf(raw)
    cut = earliest_cut(text, ctx, final=True)
    if cut is not None:
        # Cut before a line: the suggestion ends with the line above, not with its newline.
        text = text[:cut].removesuffix("\n")
    text = first_line_indent(text, ctx)
    text = normalise_indentation(text, ctx)
    text = trim_end(text, ctx)
    if not text.strip():
        return None
    replace_chars = closing_overlap(text, ctx)
    if text == ctx.right[:replace_chars]:
        return None  # it only retypes the closers already there
    return Suggestion(text.replace("\n", cursor.line_ending), replace_chars)


class Finisher:
    """Raw tokens so far -> the suggestion, for one request: the stop rules while decoding and the
    cleaning after, on the same text (cut where a rule fired)."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        cursor: Cursor,
        mode: Mode,
        deadline: float | None = None,
    ):
        self.decode = decode
        self.cursor = cursor  # LF text
        self.mode = mode
        self.deadline = deadline  # time.perf_counter(): past it, stop at the next line end
        self.cut: int | None = None  # where a stop rule ended the text

    def should_stop(self, ids: Sequence[int]) -> bool:
        text = self.decode(list(ids))
        out_of_time = self.deadline is not None and time.perf_counter() > self.deadline
        if out_of_time and "\n" in self.decode(list(ids[-1:])):
            self.cut = text.rindex("\n") + 1
            return True
        self.cut = stop_index(text, self.cursor, self.mode)
        return self.cut is not None

    def suggestion(self, ids: Sequence[int]) -> Suggestion | None:
        return clean(self.decode(list(ids))[: self.cut], self.cursor, self.mode)


# ---- context ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def context(cursor: Cursor, mode: Mode) -> Context:
    # Cached: `stop_index` asks after every token with the same cursor.
    near = Cursor(cursor.prefix[-CONTEXT_CHARS:], cursor.suffix[:CONTEXT_CHARS], cursor.language_id)
    near = near.normalized()
    language = language_for(cursor.language_id)
    left, right = line_around(near)
    # (Glued to a word, the suggestion continues that word instead: not an editor situation,
    # the gate offers nothing there, but the benchmark's random spans do start there.)
    line_start = left == "" and right.strip() != "" and not before_word(right)
    later = near.suffix.split("\n")[0 if line_start else 1 :]
    non_blank = [line for line in later if line.strip()]
    earlier = near.prefix.split("\n")[:-1]
    unit = indent_unit(earlier + later, language)
    block_indent, closer_indent = block_limits(left, earlier, language)
    return Context(
        mode=mode,
        language=language,
        left=left,
        right=right,
        line_start=line_start,
        suffix_lines=tuple(non_blank[:SUFFIX_LINES]),
        suffix_ends=len(non_blank) <= SUFFIX_LINES,
        block_indent=block_indent,
        closer_indent=closer_indent,
        expected_indent=expected_indent(earlier, language, unit),
        indent_unit=unit,
    )


def width(indentation: str) -> int:
    return len(indentation.expandtabs(TAB_WIDTH))


def indent_of(line: str) -> int:
    return width(line[: len(line) - len(line.lstrip())])


def indent_unit(lines: list[str], language: Language) -> str:
    """The file's indentation step: a tab, some spaces, or "" when the lines do not show it."""
    code = [line for line in lines if line.strip()]
    tabs = sum(line.startswith("\t") for line in code)
    spaces = sum(line.startswith(" ") for line in code)
    if tabs > spaces:
        return "\t"
    return " " * (indentation_step(code, language) or 0)


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


def block_limits(left: str, earlier: list[str], language: Language) -> tuple[int, int | None]:
    """(block_indent, closer_indent) for the cursor: see `Context`."""
    if left.strip():
        block_indent = indent_of(left) + (1 if opens_block(left, language) else 0)
        headers = [*earlier, left]
    else:
        block_indent = width(left)
        headers = earlier
    for line in reversed(headers):
        if line.strip() and indent_of(line) < block_indent:
            return block_indent, indent_of(line) if closable(line, language) else None
    return block_indent, None


def expected_indent(earlier: list[str], language: Language, unit: str) -> int:
    """The indentation a statement on a new line after `earlier` gets."""
    previous = next((line for line in reversed(earlier) if line.strip()), "")
    step = width(unit) or 4
    return indent_of(previous) + (step if opens_block(previous, language) else 0)


# ---- cutting rules (shared by stop_index and clean) -------------------------------------------


def earliest_cut(text: str, ctx: Context, final: bool) -> int | None:
    """The first index where any cutting rule ends the suggestion.

    `final` is True once the output is complete: its last line then counts as a whole line.
    """
    cuts = [
        control_token_cut(text),
        line_end_cut(text, ctx),
        rest_of_line_cut(text, ctx, final),
        suffix_repeat_cut(text, ctx, final),
        dedent_cut(text, ctx, final),
        stop_string_cut(text, ctx),
        repeated_lines_cut(text),
        repeated_tokens_cut(text, final),
    ]
    return min((cut for cut in cuts if cut is not None), default=None)


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
        # both append): two in a row are, or one where the suffix or the output ends.
        if (
            matched >= 2
            or (matched == len(ctx.suffix_lines) and ctx.suffix_ends)
            or (final and matched == len(after))
        ):
            return start
    return None


def dedent_cut(text: str, ctx: Context, final: bool) -> int | None:
    """Multi-line: stop at a line that leaves the cursor's block.

    The block's own closing line (`}`, `end`) is kept when the suffix does not close it already.
    """
    if ctx.mode is not Mode.MULTI_LINE:
        return None
    for start, line in whole_lines(text, ctx, final):
        if start == 0 or not line.strip() or indent_of(line) >= ctx.block_indent:
            continue
        if (
            indent_of(line) == ctx.closer_indent
            and closes_block(line, ctx.language)
            and not (ctx.suffix_lines and same_line(ctx.suffix_lines[0], line))
        ):
            return start + len(line)
        return start
    return None


def stop_string_cut(text: str, ctx: Context) -> int | None:
    """Multi-line: stop where a new top-level definition begins (after the suggestion's start)."""
    if ctx.mode is not Mode.MULTI_LINE:
        return None
    begins = len(text) - len(text.lstrip())
    found = [text.find(stop, begins) for stop in ctx.language.stop_strings]
    return min((index + 1 for index in found if index >= 0), default=None)


def repeated_lines_cut(text: str) -> int | None:
    """Keep one copy of a block of lines that the output repeats LINE_COPIES times in a row."""
    lines = text.split("\n")[:-1]  # complete lines only
    starts = list(itertools.accumulate((len(line) + 1 for line in lines), initial=0))
    cuts = []
    for size in range(1, MAX_LOOP_LINES + 1):
        same = 0  # lines from `index` on that equal the line `size` further down
        for index in range(len(lines) - size - 1, -1, -1):
            same = same + 1 if lines[index] == lines[index + size] else 0
            block = lines[index : index + size]
            if same >= (LINE_COPIES - 1) * size and any(line.strip() for line in block):
                cuts.append(starts[index + size])
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


# ---- reshaping rules (clean only) -------------------------------------------------------------


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
    """Re-indent the model's lines in the file's style: tabs or spaces, and the step width."""
    lines = text.split("\n")
    first = 0 if ctx.left == "" else 1  # a line that starts mid-line keeps its spacing
    owned = [line for line in lines[first:] if line.strip()]
    reindent: Callable[[str], str]
    if ctx.indent_unit == "\t":
        reindent = spaces_to_tabs
    elif any(line.startswith("\t") for line in owned):
        reindent = functools.partial(tabs_to_spaces, step=width(ctx.indent_unit) or 4)
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
    (alignment), or when the suggestion ends in a block header: the body after it is already in
    the document, indented to match the model's layout.
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

    def reindent(line: str) -> str:
        depth = indent_of(line)
        if depth <= base or not line.strip():
            return line
        return " " * (base + (depth - base) // model_step * file_step) + line.lstrip()

    return reindent


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


def first_outer_close(text: str, ctx: Context) -> int | None:
    """Index of the first bracket or quote in `text` that closes one opened before the cursor."""
    quote = open_quote(ctx.left, ctx.language)
    in_outer_string = bool(quote)
    depth = 0  # brackets the suggestion opened itself
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                if in_outer_string:
                    return index
                quote = ""
        elif char in ctx.language.quotes:
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                return index
            depth -= 1
        index += 1
    return None


def closing_overlap(text: str, ctx: Context) -> int:
    """How many characters right of the cursor the suggestion overwrites.

    When the rest of the line is only closers (an auto-closed `)`, `"]`, `);`) and the suggestion
    closes them itself, the suggestion replaces them instead of leaving a duplicate.
    """
    right = ctx.right.rstrip()
    if ctx.line_start or not right.strip() or code_right(ctx):
        return 0
    close = first_outer_close(text, ctx)
    if close is None:
        # No bracket closed: only plain punctuation (`;`, `,`) can be shared.
        body = text.split("\n")[-1]
        tail = body[len(body.rstrip(";,.:")) :]
    else:
        tail = text[close:].split("\n")[0]
    replaced = 0
    position = 0
    for index, char in enumerate(right):
        if char.isspace():
            continue
        position = tail.find(char, position)
        if position < 0:
            break
        position += 1
        replaced = index + 1
    return replaced
