"""Holds a variety of sockets until stdin closes, for comparing monitor listings.

Run inside a netlab host: TCP listeners on IPv4 and IPv6, two SO_REUSEPORT listeners
sharing one address (two sockets, one flow key), connections with bytes both ways, an
orphan that still has data to send (a socket without a file), TCP sockets bound to a
port but neither listening nor connected (port 7303), UDP sockets.
"""

from __future__ import annotations

import fcntl
import socket
import sys
import termios
import time


def main() -> None:
    held: list[socket.socket] = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        listener = socket.socket(family)
        listener.bind((host, 0))
        listener.listen(16)
        held.append(listener)
        for size in (0, 1, 70_000):
            client = socket.create_connection(listener.getsockname()[:2])
            server, _ = listener.accept()
            client.sendall(b"c" * size)
            server.sendall(b"s" * (size // 2))
            server.recv(size + 1) if size else None
            held += [client, server]
    for _ in range(2):
        shared = socket.socket()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", 7301))
        shared.listen(4)
        held.append(shared)
    held.append(_orphan())
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        bound = socket.socket(family)
        bound.bind((host, 7303))
        held.append(bound)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 7302))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.connect(("127.0.0.1", 7302))
    peer.send(b"u" * 300)
    udp.recvfrom(1000)
    held += [udp, peer]
    print("ready", flush=True)
    sys.stdin.read()


def _orphan() -> socket.socket:
    """Close a socket whose peer does not read: it lingers in FIN_WAIT1 without a file.
    The peer (returned) keeps it from finishing."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    try:
        while True:
            client.send(b"o" * 65536)
    except BlockingIOError:
        pass
    client.close()
    _until_full(peer)
    return peer


def _until_full(peer: socket.socket) -> None:
    """Wait until the peer's receive queue stops growing: its window is full, so the
    orphan's counters stand still while listings compare them."""
    queued, steady, deadline = -1, 0, time.monotonic() + 5
    while steady < 5 and time.monotonic() < deadline:
        now = int.from_bytes(fcntl.ioctl(peer, termios.FIONREAD, b"\0" * 4), "little")
        steady = steady + 1 if now == queued else 0
        queued = now
        time.sleep(0.02)


if __name__ == "__main__":
    main()
