"""Which protocol a client speaks, from its first bytes (sans-io).

    identifier = Identifier()
    result = identifier.feed(first_bytes)   # None: send more bytes
    ...
    result = identifier.give_up()           # the client went quiet (a server speaks first)

Recognised: TLS (with its ClientHello: SNI, ALPN, version, JA3, JA4), HTTP/1.x (method,
Host, path), the HTTP/2 preface, an SSH banner, DNS over TCP; anything else is
"unknown". At most MAX_SNIFF bytes are looked at (a ClientHello may take up to
tls_hello.MAX_HELLO).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from netwarden.inspect.tls_hello import MAX_HELLO, ClientHello, ClientHelloReader, NotClientHello

MAX_SNIFF = 16 * 1024
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP_METHODS = (
    b"GET",
    b"POST",
    b"HEAD",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
)
_REQUEST_LINE = re.compile(rb"([A-Z]{3,7}) ([\x21-\x7e]+) HTTP/1\.[01]\r?\n")
_HOST = re.compile(rb"\r?\nhost:[ \t]*([^\r\n]*)", re.IGNORECASE)
_SSH = re.compile(rb"SSH-(\d\.\d+)-([\x21-\x7e]{1,255})")


@dataclass(frozen=True, slots=True)
class Identification:
    protocol: str  # tls, http, http2, ssh, dns, unknown
    hello: ClientHello | None = None
    method: str = ""
    host: str = ""
    path: str = ""
    software: str = ""  # the SSH banner's software

    @property
    def server_name(self) -> str:
        """SNI for TLS, the Host header for HTTP (without a port)."""
        if self.hello is not None:
            return self.hello.server_name or ""
        return _without_port(self.host)

    def summary(self) -> str:
        """One short phrase for a table column: 'tls example.com h2', 'http GET host'."""
        if self.hello is not None:
            parts = ["tls", self.hello.server_name or "(no sni)"]
            if self.hello.alpn:
                parts.append(",".join(self.hello.alpn_names))
            return " ".join(parts)
        if self.protocol == "http":
            return f"http {self.method} {self.host}".rstrip()
        return self.protocol

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol}
        if self.hello is not None:
            out.update(
                sni=self.hello.server_name,
                alpn=list(self.hello.alpn_names),
                tls_version=self.hello.version_name,
                ja3=self.hello.ja3(),
                ja4=self.hello.ja4(),
            )
        if self.protocol == "http":
            out.update(method=self.method, host=self.host, path=self.path)
        if self.software:
            out["software"] = self.software
        return out


UNKNOWN = Identification("unknown")


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Identifier:
    def __init__(self) -> None:
        self._data = bytearray()
        self.result: Identification | None = None

    def feed(self, data: bytes) -> Identification | None:
        if self.result is None:
            tls = (self._data[:1] or data[:1]) == b"\x16"
            limit = MAX_HELLO + 1024 if tls else MAX_SNIFF
            self._data += data[: max(0, limit - len(self._data))]
            self.result = self._identify(bytes(self._data), len(self._data) >= limit)
        return self.result

    def give_up(self) -> Identification:
        """No more bytes are coming soon: decide on what was seen."""
        if self.result is None:
            self.result = self._identify(bytes(self._data), ended=True) or UNKNOWN
        return self.result

    @staticmethod
    def _identify(data: bytes, ended: bool) -> Identification | None:
        if not data:
            return UNKNOWN if ended else None
        if data[0] == 0x16:
            try:
                hello = ClientHelloReader().feed(data)
            except NotClientHello:
                return UNKNOWN
            if hello is not None:
                return Identification("tls", hello=hello)
            return UNKNOWN if ended else None
        for guess in (_http2, _http1, _ssh, _dns):
            result = guess(data, ended)
            if result is not None:
                return result if result.protocol else None
        return UNKNOWN


_NEED_MORE = Identification("")  # a guess that cannot tell yet


def _prefix_of(data: bytes, whole: bytes) -> bool:
    return whole.startswith(data[: len(whole)]) and len(data) < len(whole)


def _http2(data: bytes, ended: bool) -> Identification | None:
    if data.startswith(HTTP2_PREFACE):
        return Identification("http2")
    if _prefix_of(data, HTTP2_PREFACE):
        return None if ended else _NEED_MORE
    return None


def _http1(data: bytes, ended: bool) -> Identification | None:
    if not any(_prefix_of(data, m + b" ") or data.startswith(m + b" ") for m in HTTP_METHODS):
        return None
    line = _REQUEST_LINE.match(data)
    if line is None:
        if b"\n" in data[:8192] or ended:
            return None
        return _NEED_MORE
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0 and not ended:
        return _NEED_MORE
    head = data if head_end < 0 else data[: head_end + 2]
    host = _HOST.search(head)
    return Identification(
        "http",
        method=line.group(1).decode("ascii"),
        path=line.group(2).decode("ascii"),
        host=host.group(1).strip().decode("latin-1") if host else "",
    )


def _ssh(data: bytes, ended: bool) -> Identification | None:
    if _prefix_of(data, b"SSH-"):
        return None if ended else _NEED_MORE
    if not data.startswith(b"SSH-"):
        return None
    banner = _SSH.match(data)
    if banner is None:
        return None if ended or b"\n" in data else _NEED_MORE
    return Identification("ssh", software=banner.group(2).decode("ascii"))


def _dns(data: bytes, ended: bool) -> Identification | None:
    """A DNS query over TCP: a length prefix, then a header asking one question."""
    if len(data) < 14:
        return None if ended else _NEED_MORE
    length = int.from_bytes(data[:2], "big")
    flags = int.from_bytes(data[4:6], "big")
    questions, answers = int.from_bytes(data[6:8], "big"), int.from_bytes(data[8:10], "big")
    opcode = (flags >> 11) & 0xF
    if (
        17 <= length <= 4096
        and not flags & 0x8000
        and opcode <= 5
        and questions == 1
        and (answers == 0)
    ):
        return Identification("dns")
    return None
