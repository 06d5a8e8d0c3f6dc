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


@dataclass(slots=True)
class Candidates:
    """Where the built-in patterns can match in one buffer: runs that can hold a card
    number ((start, end)), and where cloud keys' prefixes start ((position, kind); None:
    not found out, search by regex)."""

    card_runs: list[tuple[int, int]]
    key_starts: list[tuple[int, int]] | None


Finder = Callable[[bytes, Candidates], Iterable["re.Match[bytes]"]]


@dataclass(frozen=True, slots=True)
class Pattern:
    regex: re.Pattern[bytes]
    shown: Callable[[bytes], str | None]  # the redacted match, None: not a real match
    finder: Finder | None = None  # a faster way to the regex's matches, by candidates

    def matches(
        self, buffer: bytes, candidates: Candidates | None = None
    ) -> Iterable[re.Match[bytes]]:
        if self.finder is None:
            return self.regex.finditer(buffer)
        return self.finder(buffer, candidates or find_candidates(buffer))


# 13 to 19 digits in a row, or a group of four and two to four more groups of three to
# six after a space or dash each (4-4-4-4, 4-6-5, 4-4-4-4-3): how cards are written.
CARD = re.compile(rb"(?<![0-9])(?:[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{3,6}){2,4})(?![0-9])")
DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
# Every card holds one of these (digits as 0).
CARD_SEEDS = (b"0" * 13, b"0000 000", b"0000-000")
RUN_AHEAD = re.compile(rb"[0 -]*")
CARD_SPAN = 40  # characters of the longest card number written with separators

KEY_PREFIXES = (
    re.compile(rb"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),  # AWS access key ids
    re.compile(rb"AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"),  # Google API keys
    re.compile(rb"gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9])"),  # GitHub tokens
    re.compile(rb"xox[abposr]-[A-Za-z0-9-]{10,200}(?![A-Za-z0-9-])"),  # Slack tokens
)


def candidates_in_python(buffer: bytes) -> Candidates:
    """What the C module (_dlpscan) finds in one pass, with bytes.find: the places a
    card seed shows and the run of digits, spaces and dashes from there."""
    flat = buffer.translate(DIGITS_AS_ZERO)
    upcoming = {seed: flat.find(seed) for seed in CARD_SEEDS}
    runs: list[tuple[int, int]] = []
    start = 0
    while True:
        for seed, at in upcoming.items():
            if 0 <= at < start:
                upcoming[seed] = flat.find(seed, start)
        found = min((at for at in upcoming.values() if at >= 0), default=-1)
        if found < 0:
            return Candidates(runs, None)
        run = RUN_AHEAD.match(flat, found)
        high = run.end() if run else found + 1
        # A card holding this place starts at most CARD_SPAN before it.
        runs.append((max(start, found - CARD_SPAN), high))
        start = high


try:
    from netwarden.inspect._dlpscan import candidates as _in_c

    def find_candidates(buffer: bytes) -> Candidates:
        card_runs, key_starts = _in_c(buffer)
        return Candidates(card_runs, key_starts)

except ImportError:  # built without a compiler
    find_candidates = candidates_in_python


def _card_matches(buffer: bytes, candidates: Candidates) -> Iterable[re.Match[bytes]]:
    """The card regex, tried only where a card can be."""
    for low, high in candidates.card_runs:
        yield from CARD.finditer(buffer, low, high)


def _key_matches(buffer: bytes, candidates: Candidates) -> Iterable[re.Match[bytes]]:
    """Each kind of key at the places its prefix starts, not inside a word."""
    if candidates.key_starts is not None:
        ends = [0] * len(KEY_PREFIXES)  # as finditer: no match inside the last of its kind
        for position, kind in candidates.key_starts:
            if position < ends[kind]:
                continue
            match = KEY_PREFIXES[kind].match(buffer, position)
            if match is not None:
                ends[kind] = match.end()
                yield match
        return
    for regex in KEY_PREFIXES:
        position = 0
        while (match := regex.search(buffer, position)) is not None:
            start = match.start()
            if start and buffer[start - 1 : start].isalnum():
                position = start + 1  # inside a word: a key may still start further on
                continue
            position = match.end()
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
        self.by_candidates = any(rule.pattern.finder is not None for rule in self.rules)

    def feed(self, data: bytes) -> list[Finding]:
        return self._search(self.tail + data, final=False)

    def finish(self) -> list[Finding]:
        return self._search(self.tail, final=True)

    def _search(self, buffer: bytes, final: bool) -> list[Finding]:
        found: list[Finding] = []
        end = self.offset + len(buffer)
        checked = end
        candidates = find_candidates(buffer) if self.by_candidates else None
        for rule in self.rules:
            for match in rule.pattern.matches(buffer, candidates):
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
        if self.reported:
            self.reported = {(name, at) for name, at in self.reported if at >= self.offset}
        return found


class DlpScanner:
    name = "dlp"

    def __init__(self, rules: Sequence[DlpRule]) -> None:
        self.rules = tuple(rules)

    def session(self, direction: Direction) -> ScanSession | None:
        if direction is not Direction.UPLOAD or not self.rules:
            return None
        return DlpSession(self.rules)
