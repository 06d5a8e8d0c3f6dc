"""Where a redirected connection was going: the Linux form of WFP's redirect context.

After nftables `redirect`/`dnat`, the kernel keeps the original destination in the
connection's conntrack entry: SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6)
read it from the accepted socket. After TPROXY the socket itself is bound to the
original destination, so getsockname() is the answer.
"""

from __future__ import annotations

import errno
import socket
import struct

SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """The (address, port) an accepted, redirected TCP connection was sent to.

    Works for connections redirected by nftables redirect/dnat (both families) and
    for TPROXY; for a connection that was not redirected it is simply the local
    address. Raises OSError for a socket that is not connected.
    """
    if sock.family == socket.AF_INET:
        try:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: no NAT on this connection
                raise
        else:
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    elif sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, _SOCKADDR_IN6)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        else:
            port = struct.unpack_from("!H", raw, 2)[0]
            address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            return _unmapped(address), port
    host, port, *_ = sock.getsockname()
    return _unmapped(str(host)), int(port)


def _unmapped(address: str) -> str:
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address
