"""Every way a program moves bytes without TCP or UDP, each with the exact bytes the
program wrote and read: raw ICMP echo (IPv4 and IPv6), ICMP "ping" sockets, a raw
socket of IP protocol 253, and AF_PACKET frames injected (SOCK_RAW) and captured
(SOCK_DGRAM). Run inside a netlab host (root; ping sockets need the host's
net.ipv4.ping_group_range to admit root's group):

    python -m netwarden.testing.traffic_zoo --peer4 10.200.1.2 --peer6 fd00:200:1::2 \\
        --interface nw1a

One JSON line per way: its name, transport (as netwarden names it), the socket's
inode, and the bytes sent and read at the socket layer. The sockets close as it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
from collections.abc import Callable

ECHOES = 10
PROTOCOL_253 = 253
ETHER_TYPE = 0x88B5  # IEEE local experimental
FRAMES = 10


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(kind: int, ident: int, sequence: int) -> bytes:
    payload = b"netwarden-zoo-" + bytes(range(42))
    header = struct.pack("!BBHHH", kind, 0, 0, ident, sequence)
    if kind == 8:  # ICMPv4: the checksum is ours; ICMPv6's the kernel computes
        header = struct.pack("!BBHHH", kind, 0, _checksum(header + payload), ident, sequence)
    return header + payload


class Way:
    def __init__(self, name: str, transport: str, sock: socket.socket) -> None:
        self.name, self.transport, self.sock = name, transport, sock
        self.sent = self.received = 0

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent += self.sock.sendto(data, address)

    def receive(self) -> None:
        self.received += len(self.sock.recv(65536))

    def report(self) -> dict[str, object]:
        return {
            "way": self.name,
            "transport": self.transport,
            "inode": os.fstat(self.sock.fileno()).st_ino,
            "pid": os.getpid(),
            "sent": self.sent,
            "received": self.received,
        }


def echo(name: str, transport: str, family: int, kind: int, peer: str, ping: bool) -> Way:
    """Echo requests and their replies, on a raw ICMP socket or a ping socket."""
    protocol = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    sock = socket.socket(family, socket.SOCK_DGRAM if ping else socket.SOCK_RAW, protocol)
    sock.settimeout(5)
    way = Way(name, transport, sock)
    for sequence in range(ECHOES):
        way.send(_echo_request(kind, 0x4E57, sequence), (peer, 0))
        way.receive()  # a raw socket may read other ICMP too: counted alike
    return way


def protocol_253(name: str, family: int, peer: str) -> Way:
    way = Way(name, "raw", socket.socket(family, socket.SOCK_RAW, PROTOCOL_253))
    for _ in range(ECHOES):
        way.send(b"\xfd" * 1000, (peer, 0))
    return way


def frames(interface: str) -> list[Way]:
    """Frames injected whole on the interface, and captured (without their header) by
    a second socket listening to every frame (only those see outgoing ones): it reads
    until it has read the injected ones (anything else it reads counts alike)."""
    every = 0x0003  # ETH_P_ALL
    capture = Way(
        "packet capture",
        "packet",
        socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(every)),
    )
    capture.sock.bind((interface, every))
    capture.sock.settimeout(5)
    inject = Way("packet injection", "packet", socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
    inject.sock.bind((interface, 0))
    header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ETHER_TYPE)
    for index in range(FRAMES):
        inject.sent += inject.sock.send(header + bytes([index]) * 100)
    seen = 0
    while seen < FRAMES:
        data, address = capture.sock.recvfrom(65536)
        capture.received += len(data)
        seen += address[1] == ETHER_TYPE
    return [inject, capture]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer4", required=True)
    parser.add_argument("--peer6", required=True)
    parser.add_argument("--interface", required=True)
    args = parser.parse_args()
    v4, v6 = socket.AF_INET, socket.AF_INET6
    making: list[Callable[[], Way | list[Way]]] = [
        lambda: echo("raw icmp echo", "icmp", v4, 8, args.peer4, ping=False),
        lambda: echo("raw icmpv6 echo", "icmp6", v6, 128, args.peer6, ping=False),
        lambda: echo("ping socket", "icmp", v4, 8, args.peer4, ping=True),
        lambda: echo("ping6 socket", "icmp6", v6, 128, args.peer6, ping=True),
        lambda: protocol_253("raw protocol 253", v4, args.peer4),
        lambda: protocol_253("raw6 protocol 253", v6, args.peer6),
        lambda: frames(args.interface),
    ]
    done: list[Way] = []
    for make in making:
        made = make()
        done += made if isinstance(made, list) else [made]
    for way in done:
        print(json.dumps(way.report()), flush=True)
    for way in done:
        way.sock.close()


if __name__ == "__main__":
    main()
