"""The addresses and ports of an IP packet's first bytes, for any backend that is
handed raw packets (NFQUEUE on Linux, WinDivert on Windows). Bytes in, values out."""

from __future__ import annotations

import socket
import struct

from netwarden.model import Endpoint, Transport

_TRANSPORTS = {6: Transport.TCP, 17: Transport.UDP}
_IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_PORTS = struct.Struct(">HH")

Addresses = tuple[Transport, Endpoint, Endpoint]  # transport, source, destination


def parse_ip(packet: bytes) -> Addresses | None:
    """(transport, source, destination) of a TCP or UDP packet; None for anything else
    or for bytes too short to say."""
    parsed = parse_headers(packet)
    return None if parsed is None else parsed[0]


def ip_length(packet: bytes) -> int:
    """The packet's length as its IP header says (it may have been copied in part)."""
    if len(packet) >= 4 and packet[0] >> 4 == 4:
        return int(struct.unpack_from(">H", packet, 2)[0])
    if len(packet) >= 6 and packet[0] >> 4 == 6:
        return 40 + int(struct.unpack_from(">H", packet, 4)[0])
    return len(packet)


def transport_payload(packet: bytes) -> bytes:
    """The TCP or UDP payload of an IP packet (b"" when there is none, or for bytes
    too short to say)."""
    parsed = parse_headers(packet)
    return b"" if parsed is None else payload_at(packet, parsed[0][0], parsed[1])


def payload_at(packet: bytes, transport: Transport, header: int) -> bytes:
    """The payload after the transport header that starts at `header`."""
    if transport is Transport.UDP:
        return packet[header + 8 :]
    if len(packet) < header + 13:
        return b""
    return packet[header + (packet[header + 12] >> 4) * 4 :]


def parse_headers(packet: bytes) -> tuple[Addresses, int] | None:
    """The addresses and where the transport header starts."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        if len(packet) < 20 or header < 20:
            return None
        protocol = packet[9]
        if struct.unpack_from(">H", packet, 6)[0] & 0x1FFF:
            return None  # a later fragment carries no ports
        source = socket.inet_ntop(socket.AF_INET, packet[12:16])
        destination = socket.inet_ntop(socket.AF_INET, packet[16:20])
    elif version == 6:
        if len(packet) < 40:
            return None
        protocol, header = packet[6], 40
        while protocol in _IPV6_EXTENSIONS or protocol == _IPV6_FRAGMENT:
            if len(packet) < header + 8:
                return None
            if protocol == _IPV6_FRAGMENT:
                if struct.unpack_from(">H", packet, header + 2)[0] & 0xFFF8:
                    return None
                protocol, header = packet[header], header + 8
            else:
                protocol, header = packet[header], header + (packet[header + 1] + 1) * 8
        source = socket.inet_ntop(socket.AF_INET6, packet[8:24])
        destination = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    else:
        return None
    transport = _TRANSPORTS.get(protocol)
    if transport is None or len(packet) < header + 4:
        return None
    sport, dport = _PORTS.unpack_from(packet, header)
    return (transport, Endpoint(source, sport), Endpoint(destination, dport)), header
