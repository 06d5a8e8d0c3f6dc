"""Kernel messages cut short or garbled: every parser (Python and C) says nothing or
raises its own error, never crashes, never reads past what it was given."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from netwarden.platform.linux import conntrack, netlink, nfqueue, sockdiag
from netwarden.platform.packet_headers import parse_ip, transport_payload
from tests.unit.builders import inet_diag_msg, tcp_info
from tests.unit.test_conntrack_parse import _message as conntrack_message

ROUNDS = 400


def _variants(good: bytes, rng: random.Random) -> list[bytes]:
    """Every truncation of a good message, and garbled copies of it."""
    cut = [good[:n] for n in range(len(good))]
    garbled = []
    for _ in range(ROUNDS):
        data = bytearray(good)
        for _flip in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        garbled.append(bytes(data))
    noise = [rng.randbytes(rng.randint(0, 300)) for _ in range(ROUNDS)]
    return cut + garbled + noise


def _diag() -> bytes:
    from tests.unit.builders import attr

    return inet_diag_msg(socket.AF_INET, 1, "10.0.0.1", 40000, "192.0.2.7", 443) + attr(
        sockdiag.INET_DIAG_INFO, tcp_info(1000, 2000, 1000)
    )


def test_sock_diag_messages() -> None:
    rng = random.Random(1)
    for data in _variants(_diag(), rng):
        record = sockdiag.parse(memoryview(data))
        assert record is None or record.inode >= 0


def test_conntrack_messages() -> None:
    rng = random.Random(2)
    for data in _variants(conntrack_message(), rng):
        for snapshot in (False, True):
            conntrack.parse(0x0100, 0, memoryview(data), snapshot=snapshot)


def test_queued_packet_messages() -> None:
    from tests.unit.builders import attr

    good = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">IHB", 42, 0x0800, 3) + b"\0")
    good += attr(3, struct.pack(">I", 7)) + attr(10, b"\x45" + b"\0" * 39)
    rng = random.Random(3)
    for data in _variants(good, rng):
        packet = nfqueue.parse_packet(memoryview(data))
        if packet is not None:
            parse_ip(packet.payload)
            transport_payload(packet.payload)


def test_ip_headers() -> None:
    rng = random.Random(4)
    good = _ipv4(6, 40000, 443)
    for data in _variants(good, rng):
        parse_ip(data)
        transport_payload(data)


def test_netlink_framing() -> None:
    """Datagrams of several messages, cut and garbled: the walk stops at the first
    message that does not fit, and an error message too short to say its code is an
    error of its own."""
    message = netlink.pack_message(20, 2, _diag(), seq=5)
    rng = random.Random(5)
    for data in _variants(message * 3, rng):
        try:
            for _type, _flags, payload in netlink.iter_messages(data):
                assert len(payload) <= len(data)
        except netlink.NetlinkError:
            pass


def test_messages_of_another_request_are_skipped() -> None:
    stale = netlink.pack_message(20, 2, _diag(), seq=1)
    ours = netlink.pack_message(20, 2, _diag(), seq=2)
    assert len(list(netlink.iter_messages(stale + ours, seq=2))) == 1


def test_native_destroy_reader_on_garbage() -> None:
    native = pytest.importorskip("netwarden.platform.linux._native")
    rng = random.Random(6)
    good = netlink.pack_message(20, 0, _diag())
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader, writer:
        reader.setblocking(False)
        variants = _variants(good, rng)
        for start in range(0, len(variants), 50):
            for data in variants[start : start + 50]:
                writer.send(data or b"\0")
            for item in native.read_destroyed(reader.fileno()):
                assert len(item) == 13


def _ipv4(protocol: int, sport: int, dport: int) -> bytes:
    """An IPv4 packet's first bytes, 10.0.0.1 to 192.0.2.7, with 20 bytes of transport."""
    addresses = (b"\n\0\0\1", b"\xc0\0\2\7")
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, protocol, 0, *addresses)
    return header + struct.pack(">HH", sport, dport) + b"\0" * 16


def _ipv6(next_header: int, extensions: bytes, sport: int, dport: int) -> bytes:
    """An IPv6 packet's first bytes, fd00::1 to fd00::2, extension headers and ports."""
    ends = [socket.inet_pton(socket.AF_INET6, a) for a in ("fd00::1", "fd00::2")]
    header = struct.pack(">IHBB16s16s", 0x60000000, 8, next_header, 64, *ends)
    return header + extensions + struct.pack(">HH", sport, dport) + b"\0" * 4


def _queued_packet(packet_id: int, hook: int, ip_packet: bytes, uid: int | None = None) -> bytes:
    from tests.unit.builders import attr

    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">IHB", packet_id, 0x0800, hook))
    body += attr(3, struct.pack(">I", 0x1234)) + attr(6, struct.pack(">I", 2))
    if uid is not None:
        body += attr(16, struct.pack(">I", uid))
    return netlink.pack_message(nfqueue.NFQNL_MSG_PACKET, 0, body + attr(10, ip_packet))


def test_native_packet_addresses_match_the_python_parser() -> None:
    """The C module's reading of a packet's first bytes is parse_ip's, on good headers,
    every truncation and garbled copies (v4 and v6, TCP and UDP, extension headers)."""
    native = pytest.importorskip("netwarden.platform.linux._native")
    v4 = _ipv4(17, 40000, 53)
    v6 = _ipv6(0, bytes([6, 0]) + b"\0" * 6, 40001, 443)  # behind a hop-by-hop header
    rng = random.Random(7)
    for good in (v4, v6):
        for data in _variants(good, rng):
            python = parse_ip(data)
            expected = None
            if python is not None:
                transport, source, destination = python
                expected = (transport.number, *source, *destination)
            assert native.packet_addresses(data) == expected


def test_native_connect_reader_on_garbage() -> None:
    """Queue messages cut short, garbled or mixed with noise: the reader returns what
    it could read whole and never crashes; a good message reads as the Python side's."""
    native = pytest.importorskip("netwarden.platform.linux._native")
    ip_packet = _ipv4(6, 40000, 443)
    good = _queued_packet(42, 3, ip_packet, uid=1000)
    rng = random.Random(8)
    reader_end, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader_end, writer:
        reader_end.setblocking(False)
        reader = native.ConnectReader(reader_end.fileno(), 5)
        try:
            writer.send(good)
            (item,) = reader.receive()
            # no socket holds 10.0.0.1:40000 here: inode -1 and no process
            assert item == (
                42,
                3,
                0x1234,
                1000,
                0,
                2,
                6,
                "10.0.0.1",
                40000,
                "192.0.2.7",
                443,
                -1,
                -1,
                0,
            )
            variants = _variants(good * 2, rng)
            for start in range(0, len(variants), 50):
                for data in variants[start : start + 50]:
                    writer.send(data or b"\0")
                for item in reader.receive():
                    assert len(item) == 14
        finally:
            reader.close()


def test_the_python_connect_reader_reads_as_the_c_one() -> None:
    """Without a compiler the CONNECT layer reads its queue in Python: the same records
    from the same queue messages (here no local socket holds the connections)."""
    native = pytest.importorskip("netwarden.platform.linux._native")
    from netwarden.platform.linux.connect_queue import PythonConnectReader

    v4, v6 = _ipv4(6, 40000, 443), _ipv6(17, b"", 5353, 53)
    messages = [
        _queued_packet(42, 3, v4, uid=1000),
        _queued_packet(43, 1, v6),
        _queued_packet(44, 3, b"\x45garbage"),
    ]

    class Queue:
        def __init__(self) -> None:
            self.verdicts: list[tuple[int, bool, int | None]] = []

        def receive(self) -> list[nfqueue.QueuedPacket]:
            parsed = [nfqueue.parse_packet(memoryview(m)[16:]) for m in messages]
            return [packet for packet in parsed if packet is not None]

        def verdict(self, packet_id: int, accept: bool, mark: int | None = None) -> None:
            self.verdicts.append((packet_id, accept, mark))

    queue = Queue()
    python = PythonConnectReader(queue)  # type: ignore[arg-type]
    reader_end, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader_end, writer:
        reader_end.setblocking(False)
        c = native.ConnectReader(reader_end.fileno(), 5)
        try:
            for message in messages:
                writer.send(message)
            from_c = c.receive()
        finally:
            c.close()
    from_python = python.receive()
    python.verdict(42, True)
    python.verdict(43, False, 0x20000000)
    python.close()
    assert from_python == from_c
    assert [record[6] for record in from_c] == [6, 17, 0]
    assert queue.verdicts == [(42, True, None), (43, False, 0x20000000)]
