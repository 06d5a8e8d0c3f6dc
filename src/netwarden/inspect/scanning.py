"""Content scanning of what the inspecting proxy passes on (sans-io apart from the
scanners that ask a daemon): a body, or one direction of a raw stream, is fed to the
policy's scanners as it flows; the last bytes are held back until the scanners have
seen the end, so a detection can still stop it.

Memory stays bounded: scanners see each piece once (keeping at most a short tail to find
what straddles two pieces), and at most `hold_back` bytes wait in netwarden.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from netwarden.inspect.commands import Detected


class ScanAction(enum.StrEnum):
    BLOCK = "block"  # stop the body (block page, or a reset once part of it went)
    LOG = "log"  # report it and let it pass


class Direction(enum.StrEnum):
    UPLOAD = "upload"  # from the client (request bodies, what the client sends)
    DOWNLOAD = "download"  # to the client


@dataclass(frozen=True, slots=True)
class Finding:
    """What one scanner found: its name, the signature (virus name, DLP pattern), and
    for DLP what matched, redacted."""

    scanner: str
    signature: str
    action: ScanAction
    matched: str = ""


class ScanSession(Protocol):
    """One body or stream direction, seen by one scanner piece by piece."""

    def feed(self, data: bytes) -> list[Finding]: ...

    def finish(self) -> list[Finding]: ...


class Scanner(Protocol):
    name: str

    def session(self, direction: Direction) -> ScanSession | None:
        """A session for one body going this way (None: this scanner does not look at
        that direction)."""
        ...


@dataclass(frozen=True, slots=True)
class Scanned:
    release: bytes  # may go on to the receiver now
    found: tuple[Finding, ...] = ()
    blocked: Finding | None = None  # the finding that stops the body (nothing released)


class BodyScan:
    """One body (or stream direction) through the scanners: holds back its last
    hold_back bytes until the scanners have seen the end; once a finding blocks it,
    nothing more is released."""

    def __init__(
        self, sessions: Sequence[ScanSession], hold_back: int, max_size: int | None = None
    ) -> None:
        self.sessions = tuple(sessions)
        self.hold_back = hold_back
        self.max_size = max_size
        self.held: deque[bytes] = deque()  # pieces, not joined (no copies)
        self.held_size = 0
        self.seen = 0
        self.unscanned = 0  # bytes beyond max_size, passed without being scanned
        self.blocked: Finding | None = None
        self.released = 0  # bytes already gone to the receiver

    def feed(self, data: bytes) -> Scanned:
        if self.blocked is not None:
            return Scanned(b"", blocked=self.blocked)
        found = self._scan(data)
        if self.blocked is not None:
            self._drop()
            return Scanned(b"", found, self.blocked)
        self.held.append(data)
        self.held_size += len(data)
        return Scanned(self._take(self.held_size - self.hold_back), found)

    def finish(self) -> Scanned:
        if self.blocked is not None:
            return Scanned(b"", blocked=self.blocked)
        found: list[Finding] = []
        for session in self.sessions:
            found += session.finish()
        self._decide(found)
        if self.blocked is not None:
            self._drop()
            return Scanned(b"", tuple(found), self.blocked)
        return Scanned(self._take(self.held_size), tuple(found))

    def _take(self, count: int) -> bytes:
        """The oldest `count` held bytes, released."""
        parts: list[bytes] = []
        while count > 0 and self.held:
            first = self.held[0]
            if len(first) <= count:
                parts.append(self.held.popleft())
            else:
                parts.append(first[:count])
                self.held[0] = first[count:]
            count -= len(parts[-1])
        release = parts[0] if len(parts) == 1 else b"".join(parts)
        self.held_size -= len(release)
        self.released += len(release)
        return release

    def _drop(self) -> None:
        self.held.clear()
        self.held_size = 0

    def _scan(self, data: bytes) -> tuple[Finding, ...]:
        if self.max_size is not None:
            room = max(0, self.max_size - self.seen)
            self.unscanned += max(0, len(data) - room)
            data = data[:room]
        self.seen += len(data)
        if not data:
            return ()
        found: list[Finding] = []
        for session in self.sessions:
            found += session.feed(data)
        self._decide(found)
        return tuple(found)

    def _decide(self, found: Sequence[Finding]) -> None:
        for finding in found:
            if finding.action is ScanAction.BLOCK:
                self.blocked = finding
                return


EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_NAME = "EICAR-Test-File"


class EicarSession:
    """Finds the EICAR test signature anywhere in a stream, also across pieces."""

    def __init__(self, action: ScanAction) -> None:
        self.action = action
        self.tail = b""
        self.found = False

    def feed(self, data: bytes) -> list[Finding]:
        if self.found:
            return []
        edge = self.tail + data[: len(EICAR) - 1]
        if EICAR in edge or EICAR in data:
            self.found = True
            return [Finding("eicar", EICAR_NAME, self.action)]
        keep = len(EICAR) - 1
        self.tail = data[-keep:] if len(data) >= keep else (self.tail + data)[-keep:]
        return []

    def finish(self) -> list[Finding]:
        return []


class EicarScanner:
    """The built-in test-signature detector (what every antivirus knows)."""

    name = "eicar"

    def __init__(self, action: ScanAction, directions: frozenset[Direction]) -> None:
        self.action = action
        self.directions = directions

    def session(self, direction: Direction) -> ScanSession | None:
        return EicarSession(self.action) if direction in self.directions else None


class ContentScanning:
    """The policy's scanners together: a BodyScan for each body that some scanner
    wants to see, or None."""

    def __init__(
        self,
        scanners: Sequence[Scanner],
        hold_back: int,
        max_size: int | None = None,
        blocking: bool = False,
    ) -> None:
        self.scanners = tuple(scanners)
        self.hold_back = hold_back
        self.max_size = max_size
        self.blocking = blocking  # a scanner waits on a daemon: run the layers in a thread

    def body(self, direction: Direction, hold_back: int | None = None) -> BodyScan | None:
        sessions = [s for s in (x.session(direction) for x in self.scanners) if s is not None]
        if not sessions:
            return None
        held = self.hold_back if hold_back is None else hold_back
        return BodyScan(sessions, held, self.max_size)


def detections(
    scanned: Scanned, direction: Direction, method: str = "", host: str = "", path: str = ""
) -> list[Detected]:
    """The findings of one step as commands for the proxy (events and log lines)."""
    return [
        Detected(
            finding.scanner,
            finding.signature,
            "blocked" if finding is scanned.blocked else "logged",
            direction.value,
            method,
            host,
            path,
            finding.matched,
        )
        for finding in scanned.found
        if finding.action is ScanAction.LOG or finding is scanned.blocked
    ]
