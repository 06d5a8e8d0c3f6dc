"""HTTP proxy requests, sans-io: CONNECT host:port, and absolute-URI requests
(GET http://host/path) rewritten to origin form for the server."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Tunnel:
    """CONNECT: answer 200, then relay raw bytes."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Forward:
    """An absolute-URI request: send `head` (origin form, Connection: close) upstream."""

    host: str
    port: int
    head: bytes


@dataclass(frozen=True, slots=True)
class BadRequest:
    status: int
    message: str

    def response(self) -> bytes:
        body = f"{self.message}\n".encode()
        return (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode() + body  # fmt: skip


_REASONS = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large",
            502: "Bad Gateway"}  # fmt: skip
Request = Tunnel | Forward | BadRequest
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


def head_complete(buffer: bytes) -> int:
    """Length of the request head once it is complete (0 while more is needed)."""
    end = buffer.find(b"\r\n\r\n")
    return 0 if end < 0 else end + 4


def parse(head: bytes) -> Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return BadRequest(400, "undecodable request")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return BadRequest(400, "malformed request line")
    method, target, version = parts
    if method == "CONNECT":
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            return BadRequest(400, "CONNECT needs host:port")
        return Tunnel(host, int(port_text))
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        return BadRequest(400, "a proxy request needs an absolute http:// URI (or CONNECT)")
    try:
        port: int = url.port or 80
    except ValueError:
        return BadRequest(400, "bad port in the URI")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = [line for line in lines[1:] if line and not line.lower().startswith(
        ("connection:", "proxy-connection:", "keep-alive:", "proxy-authorization:"))]  # fmt: skip
    rebuilt = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close"])
    return Forward(url.hostname, port, (rebuilt + "\r\n\r\n").encode("latin-1"))
