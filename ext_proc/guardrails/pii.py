"""Detectors for personal data and secrets in text. Each returns the spans it found; candidates are checked where a
checksum exists (Luhn for card numbers, ISO 13616 mod-97 for IBANs), so ordinary numbers are not flagged.

They read the normalised copy of a text (`normalize.py`): NBSP, thin and narrow spaces are plain spaces there, and
fullwidth characters their ASCII forms, so the patterns need only ASCII separators; whitespace is as the client wrote
it. Card digit groups may be separated by up to two spaces, tabs, `.` or `-`; IBAN groups by one space, `.` or `-`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

Span = tuple[int, int]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,24}")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?!\w)")
_CARD = re.compile(r"(?<!\d)(?:\d[ \t.-]{0,2}){12,18}\d(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ .-]?[A-Z0-9]{4}){2,7}(?:[ .-]?[A-Z0-9]{1,4})?\b")
_SEPARATORS = re.compile(r"[ \t.-]")
_NOT_DIGIT = re.compile(r"\D")
_DIGIT = re.compile(r"\d")
_API_KEY = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|ghp_[A-Za-z0-9]{36}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}|bg-[A-Za-z0-9_-]{20,})")


def luhn_valid(digits: str) -> bool:
    total, double = 0, False
    for char in reversed(digits):
        value = int(char)
        if double:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
        double = not double
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = _SEPARATORS.sub("", candidate)
    if not 15 <= len(compact) <= 34:
        return False
    rotated = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rotated)
    return int(number) % 97 == 1


def _matches(pattern: re.Pattern[str], text: str, accept: Callable[[str], bool] | None = None) -> Iterator[Span]:
    for match in pattern.finditer(text):
        if accept is None or accept(match.group()):
            yield match.span()


def _card(value: str) -> bool:
    digits = _SEPARATORS.sub("", value)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone(value: str) -> bool:
    digits = _NOT_DIGIT.sub("", value)
    return 8 <= len(digits) <= 15 and not luhn_card_like(digits)


def luhn_card_like(digits: str) -> bool:
    """A number that is a valid card number is reported as a card, not a phone number."""
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


DETECTORS: dict[str, Callable[[str], Iterator[Span]]] = {
    "email": lambda text: _matches(_EMAIL, text) if "@" in text else iter(()),
    "card": lambda text: _matches(_CARD, text, _card) if _DIGIT.search(text) else iter(()),
    "iban": lambda text: _matches(_IBAN, text, iban_valid) if _DIGIT.search(text) else iter(()),
    "api_key": lambda text: _matches(_API_KEY, text),
    "phone": lambda text: _matches(_PHONE, text, _phone) if _DIGIT.search(text) else iter(()),
}
"""Order matters for overlapping finds: the first detector's span wins. A text without the character every find of
a kind has (`@`, a digit) is not scanned for it: most text has no `@`, and an email pattern tried at every position
of it is the costliest scan."""
KINDS = tuple(DETECTORS)


def find(text: str, kinds: tuple[str, ...]) -> list[tuple[str, Span]]:
    """Non-overlapping (kind, span) finds, in text order."""
    found: list[tuple[str, Span]] = []
    taken: list[Span] = []
    for kind in kinds:
        for start, end in DETECTORS[kind](text):
            if all(end <= s or start >= e for s, e in taken):
                taken.append((start, end))
                found.append((kind, (start, end)))
    found.sort(key=lambda item: item[1][0])
    return found
