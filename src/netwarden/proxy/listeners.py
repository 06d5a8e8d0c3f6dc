"""Listening sockets for the proxy's listeners (transparent, TPROXY, SOCKS5, HTTP)."""

from __future__ import annotations

import socket

IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75


def listening_socket(host: str, port: int, tproxy: bool = False) -> socket.socket:
    """A non-blocking TCP listener on host:port (IPv6 only for an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if tproxy:  # accept connections addressed to other hosts (TPROXY); needs root
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
