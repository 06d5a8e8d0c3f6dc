"""This namespace's own addresses (RTM_GETADDR), to tell which side of a conversation
conntrack reports is this host's."""

from __future__ import annotations

import socket
import struct

from netwarden.platform.linux import netlink

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
_IFADDRMSG = struct.Struct("=BBBBI")


def parse_address(payload: memoryview) -> str | None:
    if len(payload) < _IFADDRMSG.size:
        return None
    family = payload[0]
    attrs = netlink.parse_attributes(payload, _IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    size = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}.get(family)
    if raw is None or size is None or len(raw) != size:
        return None
    return socket.inet_ntop(family, bytes(raw))


class LocalAddresses:
    """Opened in the namespace it describes (a netlink socket belongs to the namespace
    it was made in); current() may then be called from any thread."""

    def __init__(self) -> None:
        self._sock = netlink.open_socket(NETLINK_ROUTE, rcvbuf=1 << 20)
        self._request = netlink.pack_message(
            RTM_GETADDR,
            netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
            _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
        )

    def current(self) -> frozenset[str]:
        found = set()
        for msg_type, _flags, payload in netlink.dump(self._sock, self._request):
            if msg_type == RTM_NEWADDR:
                address = parse_address(payload)
                if address is not None:
                    found.add(address)
        return frozenset(found)

    def close(self) -> None:
        self._sock.close()
