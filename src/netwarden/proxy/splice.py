"""The kernel fast path: bytes move socket -> pipe -> socket with splice(2) and never
enter Python. Used once a flow needs no more inspection; Linux only.

Each direction runs in a thread of its own with blocking sockets; the end of one
direction is carried across as a half-close, exactly like the asyncio relay.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from netwarden.proxy.relay import RelayStats

assert sys.platform == "linux", "splice(2) is Linux only"

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
SPLICE_F_MOVE = 1  # not SPLICE_F_MORE: it corks small writes for up to 200 ms


IDLE_CHECK = 5.0  # a blocked splice wakes up this often to check for idleness


def _direction(source: socket.socket, target: socket.socket, stats: RelayStats,
               upstream: bool, errors: list[str], idle_timeout: float) -> None:  # fmt: skip
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # a smaller pipe only costs speed
        import fcntl

        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
    moved = 0
    try:
        while True:
            try:
                count = os.splice(source.fileno(), write_end, PIPE_SIZE, flags=SPLICE_F_MOVE)
            except BlockingIOError:  # the receive timeout: is the whole flow idle?
                if time.monotonic() - stats.last_activity < idle_timeout:
                    continue
                raise TimeoutError(f"idle for {idle_timeout:.0f} s") from None
            if count == 0:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            pending = count
            while pending:
                pending -= os.splice(read_end, target.fileno(), pending,
                                     flags=SPLICE_F_MOVE)  # fmt: skip
            moved += count
            stats.last_activity = time.monotonic()
            if upstream:
                stats.client_to_server = moved
            else:
                stats.server_to_client = moved
    except OSError as exc:  # TimeoutError included
        errors.append(str(exc) if isinstance(exc, TimeoutError) else
                      f"{type(exc).__name__}: {exc.strerror or exc}")  # fmt: skip
        # The other direction cannot go on either: wake it up.
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(read_end)
        os.close(write_end)


def start_relay(client: socket.socket, server: socket.socket, idle_timeout: float,
                done: Callable[[RelayStats], None]) -> None:  # fmt: skip
    """Relay in two threads, one per direction; when both have ended, close both
    sockets and call done(stats) from the thread that finished last."""
    stats = RelayStats()
    errors: list[str] = []
    timeout = struct.pack("ll", int(IDLE_CHECK), 0)
    for sock in (client, server):
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    remaining = [2]
    lock = threading.Lock()

    def run(source: socket.socket, target: socket.socket, upstream: bool) -> None:
        _direction(source, target, stats, upstream, errors, idle_timeout)
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            client.close()
            server.close()
            stats.error = errors[0] if errors else ""
            done(stats)

    for source, target, upstream in ((client, server, True), (server, client, False)):
        threading.Thread(target=run, args=(source, target, upstream), daemon=True,
                         name="netwarden-splice").start()  # fmt: skip
