from __future__ import annotations

import socket

from netwarden.model import Endpoint, Transport
from netwarden.platform.base import SocketRecord
from netwarden.platform.linux import sockdiag
from tests.unit.builders import attr, inet_diag_msg, tcp_info

ESTABLISHED, CLOSE_WAIT = 1, 8


def _parse(
    message: bytes, transport: Transport | None = Transport.TCP, destroyed: bool = False
) -> SocketRecord | None:
    return sockdiag.parse(memoryview(message), transport, destroyed=destroyed)


def test_established_ipv4_socket_with_bytes() -> None:
    msg = inet_diag_msg(socket.AF_INET, ESTABLISHED, "10.0.0.1", 40000, "192.0.2.7", 443)
    record = _parse(msg + attr(sockdiag.INET_DIAG_INFO, tcp_info(7001, 3000, 7000)))
    assert record is not None
    assert record.local == Endpoint("10.0.0.1", 40000)
    assert record.remote == Endpoint("192.0.2.7", 443)
    assert record.state == "ESTABLISHED"
    assert (record.inode, record.uid, record.cookie) == (77, 1000, 5)
    assert record.transport is Transport.TCP
    # bytes_acked counts our SYN: the smaller of acked and sent is the payload.
    assert (record.bytes_sent, record.bytes_received) == (7000, 3000)


def test_peer_fin_is_not_counted_as_payload() -> None:
    msg = inet_diag_msg(socket.AF_INET6, CLOSE_WAIT, "fd00::1", 1, "fd00::2", 2)
    record = _parse(msg + attr(sockdiag.INET_DIAG_INFO, tcp_info(10, 501, 10)))
    assert record is not None
    assert record.bytes_received == 500
    assert record.local.address == "fd00::1"


def test_ipv4_mapped_ipv6_addresses_are_shown_as_ipv4() -> None:
    msg = inet_diag_msg(socket.AF_INET6, ESTABLISHED, "::ffff:10.1.2.3", 80, "::ffff:10.9.9.9", 9)
    record = _parse(msg + attr(sockdiag.INET_DIAG_INFO, tcp_info(0, 0, 0)))
    assert record is not None
    assert record.local.address == "10.1.2.3"
    assert record.remote.address == "10.9.9.9"


def test_time_wait_mini_sockets_are_left_out_of_tcp_dumps() -> None:
    msg = inet_diag_msg(socket.AF_INET, 5, "10.0.0.1", 1, "10.0.0.2", 2, inode=0)
    assert _parse(msg) is None
    assert _parse(msg, Transport.UDP) is not None


def test_short_or_foreign_messages_are_ignored() -> None:
    assert _parse(b"\x02" * 10) is None
    msg = bytearray(inet_diag_msg(socket.AF_INET, 1, "10.0.0.1", 1, "10.0.0.2", 2))
    msg[0] = socket.AF_UNIX
    assert _parse(bytes(msg)) is None


def test_truncated_tcp_info_gives_zero_bytes_rather_than_garbage() -> None:
    msg = inet_diag_msg(socket.AF_INET, ESTABLISHED, "10.0.0.1", 1, "10.0.0.2", 2)
    record = _parse(msg + attr(sockdiag.INET_DIAG_INFO, b"\xff" * 64))
    assert record is not None
    assert (record.bytes_sent, record.bytes_received) == (0, 0)


def test_destroy_broadcast_says_its_protocol() -> None:
    msg = inet_diag_msg(socket.AF_INET, 7, "10.0.0.1", 1, "0.0.0.0", 0)
    udp = _parse(msg + attr(sockdiag.INET_DIAG_PROTOCOL, b"\x11"), None, destroyed=True)
    tcp = _parse(msg + attr(sockdiag.INET_DIAG_PROTOCOL, b"\x06"), None, destroyed=True)
    assert udp is not None
    assert udp.transport is Transport.UDP
    assert udp.state == "UNCONN"
    assert tcp is not None
    assert tcp.transport is Transport.TCP
    assert tcp.destroyed


def test_a_socket_bound_but_inactive_is_listed_without_counters() -> None:
    msg = inet_diag_msg(socket.AF_INET, sockdiag.TCP_CLOSE, "10.0.0.1", 7303, "0.0.0.0", 0)
    record = _parse(msg)  # no tcp_info attribute
    assert record is not None
    assert (record.state, record.bytes_sent, record.bytes_received) == ("CLOSE", 0, 0)
