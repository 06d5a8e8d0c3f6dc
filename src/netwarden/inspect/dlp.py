"""Data-leak prevention: patterns looked for in what a client sends (sans-io).

Built-in patterns: payment card numbers (13 to 19 digits, spaces or dashes between
them, that pass the Luhn check), PEM private-key blocks, and cloud access keys (AWS
access key ids, Google API keys, GitHub and Slack tokens); any other regular expression
from the policy. A match that straddles two pieces of the stream is found (matches up
to TAIL bytes long); what matched is reported redacted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from netwarden.inspect.scanning import Direction, Finding, ScanAction, ScanSession

TAIL = 1024  # bytes of the previous piece searched again with the next one


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(matched: bytes) -> str | None:
    digits = re.sub(rb"[ -]", b"", matched).decode()
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return None
    return "*" * (len(digits) - 4) + digits[-4:]


def _masked(matched: bytes) -> str | None:
    text = matched.decode("latin-1")
    if len(text) < 12:
        return "*" * len(text)
    return text[:4] + "*" * (len(text) - 8) + text[-4:]


def _label(matched: bytes) -> str | None:
    return matched.decode("latin-1")  # a PEM header names the kind of key, not the key


Finder = Callable[[bytes], Iterable["re.Match[bytes]"]]


@dataclass(frozen=True, slots=True)
class Pattern:
    regex: re.Pattern[bytes]
    shown: Callable[[bytes], str | None]  # the redacted match, None: not a real match
    finder: Finder | None = None  # a faster way to the regex's matches

    def matches(self, buffer: bytes) -> Iterable[re.Match[bytes]]:
        return self.finder(buffer) if self.finder is not None else self.regex.finditer(buffer)


CARD = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
RUN_AHEAD = re.compile(rb"[0 -]*")
CARD_SPAN = 40  # characters of the longest card number written with separators
DENSE_HITS, DENSE_SPACING = 64, 256  # this many groups of digits this close: dense text


def _card_matches(buffer: bytes) -> Iterable[re.Match[bytes]]:
    """The card regex, tried only around four digits in a row (every card format has
    such a group): a text with few such places is searched at memchr speed."""
    flat = buffer.translate(DIGITS_AS_ZERO)
    start = hits = 0
    while (found := flat.find(b"0000", start)) >= 0:
        hits += 1
        if hits == DENSE_HITS and found < DENSE_HITS * DENSE_SPACING:
            # Digits everywhere (a table, a form of numbers): one pass of the regex.
            yield from CARD.finditer(buffer, start)
            return
        run = RUN_AHEAD.match(flat, found)
        high = run.end() if run else found + 4
        # A card holding these digits starts at most CARD_SPAN before them.
        yield from CARD.finditer(buffer, max(start, found - CARD_SPAN), high)
        start = high


KEY_PREFIXES = (
    re.compile(rb"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),  # AWS access key ids
    re.compile(rb"AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"),  # Google API keys
    re.compile(rb"gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9])"),  # GitHub tokens
    re.compile(rb"xox[abposr]-[A-Za-z0-9-]{10,200}(?![A-Za-z0-9-])"),  # Slack tokens
)


def _key_matches(buffer: bytes) -> Iterable[re.Match[bytes]]:
    """Each kind of key by its literal prefix (fast to search), not inside a word."""
    for regex in KEY_PREFIXES:
        for match in regex.finditer(buffer):
            start = match.start()
            if start and buffer[start - 1 : start].isalnum():
                continue
            yield match


BUILTIN = {
    "card": Pattern(CARD, _card, _card_matches),
    "private_key": Pattern(
        re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----"), _label
    ),
    "cloud_key": Pattern(KEY_PREFIXES[0], _masked, _key_matches),
}


def user_pattern(regex: str) -> Pattern:
    """A policy's own regular expression (raises re.error when it does not compile)."""
    return Pattern(re.compile(regex.encode()), _masked)


@dataclass(frozen=True, slots=True)
class DlpRule:
    name: str
    line: int
    pattern: Pattern
    action: ScanAction = ScanAction.BLOCK


class DlpSession:
    """One outbound stream searched for the rules' patterns."""

    def __init__(self, rules: Sequence[DlpRule]) -> None:
        self.rules = tuple(rules)
        self.tail = b""
        self.offset = 0  # of the tail's first byte in the stream
        self.checked = 0  # matches ending at or before this offset were looked at
        self.reported: set[tuple[str, int]] = set()

    def feed(self, data: bytes) -> list[Finding]:
        return self._search(self.tail + data, final=False)

    def finish(self) -> list[Finding]:
        return self._search(self.tail, final=True)

    def _search(self, buffer: bytes, final: bool) -> list[Finding]:
        found: list[Finding] = []
        end = self.offset + len(buffer)
        checked = end
        for rule in self.rules:
            for match in rule.pattern.matches(buffer):
                start, stop = self.offset + match.start(), self.offset + match.end()
                if stop <= self.checked or (rule.name, start) in self.reported:
                    continue
                if stop == end and not final:  # it may go on in the next piece
                    checked = min(checked, stop - 1)
                    continue
                shown = rule.pattern.shown(match.group())
                if shown is None:
                    continue
                self.reported.add((rule.name, start))
                found.append(Finding("dlp", rule.name, rule.action, shown))
        self.checked = checked
        keep = buffer[-TAIL:]
        self.offset = end - len(keep)
        self.tail = keep
        self.reported = {(name, start) for name, start in self.reported if start >= self.offset}
        return found


class DlpScanner:
    name = "dlp"

    def __init__(self, rules: Sequence[DlpRule]) -> None:
        self.rules = tuple(rules)

    def session(self, direction: Direction) -> ScanSession | None:
        if direction is not Direction.UPLOAD or not self.rules:
            return None
        return DlpSession(self.rules)
