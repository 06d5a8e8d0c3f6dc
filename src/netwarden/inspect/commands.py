"""What sans-io layers ask of the I/O module that drives them (the proxy), in the spirit
of mitmproxy's proxy/commands.py: a layer gets bytes and returns commands."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    __hash__ = object.__hash__  # Enum's own is Python code, and sides key every lookup

    @property
    def other(self) -> Side:
        return Side.SERVER if self is Side.CLIENT else Side.CLIENT


@dataclass(frozen=True, slots=True)
class Send:
    side: Side
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfData:
    """No more bytes to this side (a half-close)."""

    side: Side


@dataclass(frozen=True, slots=True)
class Close:
    """Close both connections once what was sent has gone; reset: abort the client's."""

    reset: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Relay:
    """Nothing more to look at: move the bytes untouched from now on."""


@dataclass(frozen=True, slots=True)
class HttpExchange:
    """An HTTP request and what became of it."""

    method: str
    host: str
    path: str
    verdict: str  # allowed, blocked
    rule: str = ""  # the rule that decided ("" when none did)
    status: int = 0  # of the response sent to the client (0 until known)


@dataclass(frozen=True, slots=True)
class TlsIntercepted:
    server_name: str
    alpn: str
    upstream_version: str


@dataclass(frozen=True, slots=True)
class TlsFailed:
    """side SERVER: the upstream failed verification; CLIENT: the client refused our
    certificate (pinning, or our CA not trusted)."""

    side: Side
    server_name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Observed:
    """Bytes a layer passes on, for the STREAM layer's callouts: from `side`; HTTP
    bodies with the request they belong to; end: that body or direction is complete."""

    side: Side
    data: bytes
    method: str = ""
    host: str = ""
    path: str = ""
    status: int = 0
    end: bool = False


@dataclass(frozen=True, slots=True)
class StreamBlocked:
    """A STREAM callout blocked a connection (it was reset)."""

    callout: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Detected:
    """A scanner's finding in a body or stream, and what became of it."""

    scanner: str
    signature: str
    action: str  # blocked, logged
    direction: str  # upload, download
    method: str = ""
    host: str = ""
    path: str = ""
    matched: str = ""  # what matched, redacted (DLP)


Command = (
    Send
    | EndOfData
    | Close
    | Relay
    | HttpExchange
    | TlsIntercepted
    | TlsFailed
    | Observed
    | StreamBlocked
    | Detected
)
