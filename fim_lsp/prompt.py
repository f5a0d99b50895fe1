"""The FIM prompt: SPM order, sentinel ids from the tokenizer, and a token budget with stable cuts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from fim_lsp.errors import TokenizerError

SUF, PRE, MID, EOT = "<|SUF|>", "<|PRE|>", "<|MID|>", "<|endoftext|>"
CONTROL_TOKENS = (SUF, PRE, MID, EOT)  # decoded output holds them when generation runs past its end

# The window moves in whole chunks of lines, so typing at the cursor does not shift where the
# prefix or suffix is cut and the engine can keep reusing its KV cache.
LINES_PER_CHUNK = 16
SUFFIX_SHARE = 0.25  # the suffix gets at most this part of the budget when both sides are long


class FimTokenizer:
    """A model's tokenizer with its FIM sentinels, encoding user text so it never becomes one."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        found = {name: tokenizer.token_to_id(name) for name in CONTROL_TOKENS}
        missing = [name for name, id_ in found.items() if id_ is None]
        ids = {name: id_ for name, id_ in found.items() if id_ is not None}
        if missing:
            raise TokenizerError(
                f"the tokenizer has no {', '.join(missing)} token: not a FIM model"
            )
        self.suf_id, self.pre_id, self.mid_id, self.eot_id = (ids[n] for n in (SUF, PRE, MID, EOT))
        self.text_tokenizer = without_control_tokens(tokenizer, set(ids))
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: str | Path) -> FimTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # tokenizers raises a bare Exception on a bad file
            if isinstance(error, TokenizerError):
                raise
            raise TokenizerError(f"cannot read the tokenizer {path}: {error}") from error

    def encode(self, text: str) -> list[int]:
        """Token ids of user text: a literal `<|SUF|>` in a file stays plain text."""
        return self.text_tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def without_control_tokens(tokenizer: Tokenizer, control: set[str]) -> Tokenizer:
    """A copy of `tokenizer` that reads the sentinels and special tokens as ordinary text.

    Added tokens always match before the BPE model runs, even for special=False sentinels, so
    the only way to keep them out of user text is a tokenizer that does not have them.
    Ordinary added tokens (GPT-NeoX's runs of spaces) stay.
    """
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [
        token
        for token in spec.get("added_tokens", [])
        if not token.get("special") and token["content"] not in control
    ]
    return Tokenizer.from_str(json.dumps(spec))


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    prefix_tokens: int
    suffix_tokens: int
    prefix_cut: int  # characters of the prefix left out (from its top)
    suffix_cut: int  # characters of the suffix left out (from its bottom)


def build_prompt(
    tokenizer: FimTokenizer, prefix: str, suffix: str, budget: int, first_line: int = 0
) -> Prompt:
    """`[SUF] suffix [PRE] prefix [MID]` in at most `budget` tokens, sentinels included.

    The prefix is cut from the top and the suffix from the bottom, at chunk boundaries of whole
    lines where possible; the sentinels are never cut. `first_line` is the document's line
    number where `prefix` starts (the prefix may be a window of a longer document).
    """
    room = budget - 3
    if room < 1:
        raise ValueError(f"a budget of {budget} tokens leaves no room for text")
    suffix_room = max(room - count_up_to(tokenizer, prefix, room), int(room * SUFFIX_SHARE))
    suffix_ids, suffix_kept = fit_suffix(tokenizer, suffix, suffix_room)
    prefix_ids, prefix_kept = fit_prefix(tokenizer, prefix, room - len(suffix_ids), first_line)
    ids = [tokenizer.suf_id, *suffix_ids, tokenizer.pre_id, *prefix_ids, tokenizer.mid_id]
    return Prompt(
        ids,
        prefix_tokens=len(prefix_ids),
        suffix_tokens=len(suffix_ids),
        prefix_cut=len(prefix) - prefix_kept,
        suffix_cut=len(suffix) - suffix_kept,
    )


def count_up_to(tokenizer: FimTokenizer, text: str, limit: int) -> int:
    """The token count of `text`, or something above `limit` without encoding all of a huge text."""
    # No tokenizer here packs more than 32 characters into a token on average.
    if len(text) > 32 * limit:
        return limit + 1
    return len(tokenizer.encode(text))


def fits(tokenizer: FimTokenizer, text: str, room: int) -> bool:
    return count_up_to(tokenizer, text, room) <= room


def fit_prefix(
    tokenizer: FimTokenizer, prefix: str, room: int, first_line: int = 0
) -> tuple[list[int], int]:
    """The prefix's tail in at most `room` tokens and its length in characters.

    Cut at a chunk boundary counted from the top of the file (the prefix's first line is line
    `first_line`): lines above the cursor keep their numbers while the user types, so the cut
    stays put until the prefix outgrows its room.
    """
    if room <= 0:
        return [], 0
    ends = line_ends(prefix)  # ends[j]: just after line first_line + j
    boundaries = ends[(LINES_PER_CHUNK - 1 - first_line) % LINES_PER_CHUNK :: LINES_PER_CHUNK]
    for starts in ([0, *boundaries], [0, *ends]):
        start = search_first_fitting(starts, lambda at: fits(tokenizer, prefix[at:], room))
        if start is not None:
            return tokenizer.encode(prefix[start:]), len(prefix) - start
    # The cursor's line alone is longer than the room: keep its last tokens.
    ids = tokenizer.encode(prefix[-32 * room :])[-room:]
    return ids, len(tokenizer.decode(ids))


def fit_suffix(tokenizer: FimTokenizer, suffix: str, room: int) -> tuple[list[int], int]:
    """The suffix's head in at most `room` tokens and its length in characters.

    Cut at a chunk boundary counted from the cursor: pressing Enter moves both together.
    """
    if room <= 0:
        return [], 0
    ends = line_ends(suffix)
    for stops in (
        [*ends[LINES_PER_CHUNK - 1 :: LINES_PER_CHUNK], len(suffix)],
        [*ends, len(suffix)],
    ):
        stop = search_first_fitting(stops[::-1], lambda at: fits(tokenizer, suffix[:at], room))
        if stop is not None:
            return tokenizer.encode(suffix[:stop]), stop
    # The rest of the cursor's line alone is longer than the room: keep its first tokens.
    ids = tokenizer.encode(suffix[: 32 * room])[:room]
    return ids, len(tokenizer.decode(ids))


def line_ends(text: str) -> list[int]:
    """Offsets just after each newline in `text`."""
    ends, at = [], text.find("\n")
    while at != -1:
        ends.append(at + 1)
        at = text.find("\n", at + 1)
    return ends


def search_first_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int | None:
    """The first candidate that fits, for candidates ordered from longest text to shortest.

    Fitting is monotonic along the list, so a binary search needs only log2(n) encodings.
    """
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            high = middle
        else:
            low = middle + 1
    return candidates[low] if low < len(candidates) else None
