"""HTTP/1.1 message heads read without h11 (sans-io), for exchanges that need nothing
but their framing and the rules' inputs: such a head is passed on as it came.

The reader is stricter than h11: whatever it does not take as plain (another version,
a body in chunks, a request body, an upgrade, an expectation, a framing header given
twice, a line it does not read strictly, an informational or unframed response) is
NotPlain, and h11 reads the same bytes instead.
"""

from __future__ import annotations

import re
from typing import NamedTuple

TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.1")
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
FIELD_LINES = re.compile(rb"(?:" + TOKEN + rb":" + FIELD_VALUE + rb"\r\n)*")
# The fields that decide framing or a rule (any other may repeat), in lines
# FIELD_LINES took.
WATCHED = re.compile(
    rb"^(host|content-length|transfer-encoding|connection|expect|upgrade|content-type):"
    rb"(" + FIELD_VALUE + rb")\r\n",
    re.MULTILINE | re.IGNORECASE,
)
DIGITS = re.compile(rb"[0-9]{1,18}")
END_OF_HEAD = b"\r\n\r\n"


class NotPlain(Exception):
    """A head for h11 to read (it may still be valid HTTP)."""


class RequestHead(NamedTuple):
    size: int  # the head's bytes, its empty line included
    method: str
    target: str
    host: str
    close: bool  # the client asks to close after this exchange


class ResponseHead(NamedTuple):
    size: int
    status: int
    length: int  # of the body
    close: bool
    content_type: str


def _head(
    buffer: bytes, limit: int, first_line: re.Pattern[bytes]
) -> tuple[int, re.Match[bytes], dict[bytes, bytes]] | None:
    """The head's size, first line (matched) and watched fields (by lower-case name)
    once it is all there; None while it is incomplete."""
    end = buffer.find(END_OF_HEAD)
    if end < 0:
        if len(buffer) >= limit:
            raise NotPlain("head too long")
        return None
    size = end + len(END_OF_HEAD)
    if size > limit:
        raise NotPlain("head too long")
    first = buffer.find(b"\r\n")
    line = first_line.fullmatch(buffer[:first])
    if line is None:
        raise NotPlain("first line")
    fields = buffer[first + 2 : end + 2]
    if FIELD_LINES.fullmatch(fields) is None:
        raise NotPlain("field line")
    found: dict[bytes, bytes] = {}
    for name, value in WATCHED.findall(fields):
        name = name.lower()
        if name in found:
            raise NotPlain(f"{name!r} twice")
        found[name] = value.strip(b" \t")
    return size, line, found


def _closes(fields: dict[bytes, bytes]) -> bool:
    options = fields.get(b"connection", b"").lower()
    return b"close" in options and any(o.strip() == b"close" for o in options.split(b","))


def request_head(buffer: bytes, limit: int) -> RequestHead | None:
    """A plain request without a body; None until its head is complete."""
    head = _head(buffer, limit, REQUEST_LINE)
    if head is None:
        return None
    size, line, fields = head
    if b"host" not in fields or fields.keys() & {b"transfer-encoding", b"expect", b"upgrade"}:
        raise NotPlain("framing")
    if fields.get(b"content-length", b"0") != b"0":
        raise NotPlain("a request body")
    return RequestHead(
        size,
        line[1].decode("ascii"),
        line[2].decode("ascii"),
        fields[b"host"].decode("latin-1"),
        _closes(fields),
    )


def response_head(buffer: bytes, limit: int, to_head: bool) -> ResponseHead | None:
    """A final response whose body's end is known (to_head: it answers a HEAD request);
    None until its head is complete."""
    head = _head(buffer, limit, STATUS_LINE)
    if head is None:
        return None
    size, line, fields = head
    status = int(line[1])
    if status < 200 or fields.keys() & {b"transfer-encoding", b"upgrade"}:
        raise NotPlain("framing")
    given = DIGITS.fullmatch(fields.get(b"content-length", b""))
    if given is None and (b"content-length" in fields or not (to_head or status in (204, 304))):
        raise NotPlain("no length")  # to the end of the connection, or odd
    length = 0 if to_head or status in (204, 304) or given is None else int(given[0])
    return ResponseHead(
        size,
        status,
        length,
        _closes(fields),
        fields.get(b"content-type", b"").decode("latin-1"),
    )
