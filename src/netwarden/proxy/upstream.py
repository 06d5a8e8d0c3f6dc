"""Reaching a destination, directly or through a chain of upstream proxies
(SOCKS5 and HTTP CONNECT), returning a connected plain socket either way."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from netwarden.proxy import socks5


class UpstreamError(OSError):
    pass


@dataclass(frozen=True, slots=True)
class Hop:
    kind: str  # socks5 or http
    host: str
    port: int
    username: str = ""
    password: str = ""

    @classmethod
    def parse(cls, text: str) -> Hop:
        """socks5://[user:pass@]host:port or http://host:port"""
        url = urlsplit(text)
        if url.scheme not in ("socks5", "socks5h", "http") or not url.hostname:
            raise ValueError(f"{text!r}: an upstream is socks5://HOST:PORT or http://HOST:PORT")
        try:
            port = url.port
        except ValueError:
            port = None
        if port is None:
            raise ValueError(f"{text!r} needs a port")
        kind = "http" if url.scheme == "http" else "socks5"
        return cls(kind, url.hostname, port, url.username or "", url.password or "")


def socks5_greeting(hop: Hop) -> bytes:
    method = socks5.USER_PASS if hop.username else socks5.NO_AUTH
    return bytes([socks5.VERSION, 1, method])


def socks5_login(hop: Hop) -> bytes:
    user, password = hop.username.encode(), hop.password.encode()
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


def socks5_connect(host: str, port: int) -> bytes:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        target = bytes([socks5.ATYP_DOMAIN, len(name)]) + name
    else:
        atyp = socks5.ATYP_IPV4 if address.version == 4 else socks5.ATYP_IPV6
        target = bytes([atyp]) + address.packed
    return bytes([socks5.VERSION, socks5.CMD_CONNECT, 0]) + target + struct.pack("!H", port)


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise UpstreamError("the upstream proxy closed the connection")
        data += chunk
    return data


async def _through_socks5(sock: socket.socket, hop: Hop, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, socks5_greeting(hop))
    version, method = await _recv_exactly(sock, 2)
    if version != socks5.VERSION or method == socks5.NO_ACCEPTABLE:
        raise UpstreamError(f"upstream {hop.host}:{hop.port} accepts none of our methods")
    if method == socks5.USER_PASS:
        await loop.sock_sendall(sock, socks5_login(hop))
        if (await _recv_exactly(sock, 2))[1] != 0:
            raise UpstreamError(f"upstream {hop.host}:{hop.port} refused the login")
    await loop.sock_sendall(sock, socks5_connect(host, port))
    head = await _recv_exactly(sock, 4)
    if head[1] != socks5.Reply.SUCCEEDED:
        reason = socks5.Reply(head[1]).name if head[1] < 9 else str(head[1])
        raise UpstreamError(f"upstream {hop.host}:{hop.port} could not connect: {reason}")
    size = {socks5.ATYP_IPV4: 4, socks5.ATYP_IPV6: 16}.get(head[3])
    if size is None:
        size = (await _recv_exactly(sock, 1))[0]
    await _recv_exactly(sock, size + 2)


async def _through_http(sock: socket.socket, hop: Hop, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    await loop.sock_sendall(sock, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > 16384:
            raise UpstreamError(f"upstream {hop.host}:{hop.port}: oversized answer")
        head += await _recv_exactly(sock, 1)  # byte by byte: nothing past the head is taken
    status_line = head.split(b"\r\n", 1)[0]
    status = status_line.split(b" ")
    if len(status) < 2 or status[1] != b"200":
        shown = status_line.decode(errors="replace")
        raise UpstreamError(f"upstream {hop.host}:{hop.port} refused CONNECT: {shown}")


def connect_direct(
    host: str,
    port: int,
    *,
    mark: int = 0,
    timeout: float = 10.0,
    on_bound: Callable[[socket.socket], None] | None = None,
) -> socket.socket:
    """A blocking socket connected to an address (no chain, no resolver): the threaded
    fast path's upstream. on_bound sees the socket once it has its local port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if mark and sys.platform == "linux":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if on_bound is not None:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            on_bound(sock)
        # A blocking connect bounded by the send timeout: one syscall, where a Python
        # timeout costs a non-blocking connect and a poll.
        sndtimeo = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, sndtimeo)
        try:
            sock.connect((host, port))
        except BlockingIOError:  # EINPROGRESS after the send timeout
            raise TimeoutError(f"no answer within {timeout:g} s") from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_upstream(
    host: str,
    port: int,
    chain: tuple[Hop, ...] = (),
    *,
    mark: int = 0,
    timeout: float = 10.0,
    on_bound: Callable[[socket.socket], None] | None = None,
) -> socket.socket:
    """A socket connected to host:port, through every hop of `chain` in order.

    on_bound sees the socket once it has its local port, before connecting."""
    first = chain[0] if chain else None
    address = (first.host, first.port) if first else (host, port)
    loop = asyncio.get_running_loop()
    try:  # an address needs no resolver round trip (the usual case: original destinations)
        literal = ipaddress.ip_address(address[0])
    except ValueError:
        infos = await loop.getaddrinfo(*address, type=socket.SOCK_STREAM)
        family, _type, _proto, _name, sockaddr = infos[0]
    else:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        sockaddr = (str(literal), address[1])
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if mark and sys.platform == "linux":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
        if on_bound is not None:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            on_bound(sock)
        await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout)
        for index, hop in enumerate(chain):
            after = chain[index + 1] if index + 1 < len(chain) else None
            next_host, next_port = (after.host, after.port) if after else (host, port)
            through = _through_socks5 if hop.kind == "socks5" else _through_http
            await asyncio.wait_for(through(sock, hop, next_host, next_port), timeout)
    except BaseException:
        sock.close()
        raise
    return sock
