"""Text as the detectors read it, and the way back to the client's own text.

Matching runs on a normalised copy: each character's Unicode compatibility form (NFKC: a fullwidth at sign, U+FF20,
is `@`, fullwidth digits and letters are ASCII ones, NBSP, thin and narrow spaces are plain spaces) with invisible
characters removed (zero-width space, joiner and non-joiner, word joiner, BOM, soft hyphen, direction marks). A find
is a span of the copy; `Normalized.original` maps it back to the span of the client's text it came from, so
redaction replaces exactly that span and leaves every other character as the client wrote it.

Whitespace is left as it is (so the map stays one piece per changed character): the patterns allow runs of it where
a separator may be (`pii.py`, and a deny phrase's words in `engine.py`). ASCII text, most text, is its own copy: the
check is `str.isascii`, and nothing is built. Only non-ASCII runs are looked at, each compared with its NFKC form
first, so text in another script costs one C call per run unless something in it changes.

Why per character, not NFKC of the whole text: NFKC of a string also composes combining sequences across what would
be piece boundaries, which cannot be mapped back piecewise; the detectors' patterns are ASCII, so the per-character
compatibility form is what they need.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e")
_INVISIBLE_CLASS = re.compile("[" + "".join(sorted(INVISIBLE)) + "]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


class Normalized:
    """The normalised copy of a text (`text`), and the index map back to the original (None: they are the same)."""

    __slots__ = ("_ident", "_norm_starts", "_orig_ends", "_orig_starts", "text")

    def __init__(self, text: str, pieces: list[tuple[int, int, int, bool]] | None) -> None:
        self.text = text
        if pieces is None:
            self._norm_starts: list[int] | None = None
            return
        self._norm_starts = [piece[0] for piece in pieces]
        self._orig_starts = [piece[1] for piece in pieces]
        self._orig_ends = [piece[2] for piece in pieces]
        self._ident = [piece[3] for piece in pieces]

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that the copy's `[start, end)` (non-empty) came from."""
        starts = self._norm_starts
        if starts is None:
            return start, end
        first = bisect_right(starts, start) - 1
        last = bisect_right(starts, end - 1) - 1
        begin = self._orig_starts[first] + (start - starts[first] if self._ident[first] else 0)
        finish = (self._orig_starts[last] + end - starts[last]) if self._ident[last] else self._orig_ends[last]
        return begin, finish

    def offset(self, position: int, original_length: int) -> int:
        """Where the copy's `position` (a cut between characters) falls in the original text."""
        if self._norm_starts is None:
            return position
        if position >= len(self.text):
            return original_length
        return self.original(position, position + 1)[0]


def normalize(text: str) -> Normalized:
    """The copy of `text` the detectors match against (see the module docstring)."""
    if text.isascii():
        return Normalized(text, None)
    out: list[str] = []
    pieces: list[tuple[int, int, int, bool]] = []  # (copy start, original start, original end, copied as is)
    length = 0
    done = 0
    for match in _NON_ASCII.finditer(text):
        start, end = match.span()
        run = match.group()
        if unicodedata.is_normalized("NFKC", run) and _INVISIBLE_CLASS.search(run) is None:
            continue  # copied as is, with the ASCII around it
        if start > done:
            pieces.append((length, done, start, True))
            out.append(text[done:start])
            length += start - done
        length = _changed(text, start, end, out, pieces, length)
        done = end
    if not pieces:
        return Normalized(text, None)
    if done < len(text):
        pieces.append((length, done, len(text), True))
        out.append(text[done:])
    return Normalized("".join(out), pieces)


def _changed(text: str, start: int, end: int, out: list[str], pieces: list[tuple[int, int, int, bool]],
             length: int) -> int:
    """Append the copy of `text[start:end]` (a non-ASCII run that changes), one piece per character; the copy's new
    length."""
    for index in range(start, end):
        char = text[index]
        if char in INVISIBLE:
            continue
        form = unicodedata.normalize("NFKC", char)
        if form:
            pieces.append((length, index, index + 1, False))
            out.append(form)
            length += len(form)
    return length
