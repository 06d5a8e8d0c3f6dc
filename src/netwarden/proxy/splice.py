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

from netwarden.proxy.relay import RelayStats

assert sys.platform == "linux", "splice(2) is Linux only"

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
SPLICE_F_MOVE, SPLICE_F_MORE = 1, 4


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
                                     flags=SPLICE_F_MOVE | SPLICE_F_MORE)  # fmt: skip
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


def splice_relay(client: socket.socket, server: socket.socket,
                 idle_timeout: float = 300.0) -> RelayStats:  # fmt: skip
    """Relay until both directions have ended; blocking; closes both sockets."""
    stats = RelayStats()
    errors: list[str] = []
    timeout = struct.pack("ll", int(IDLE_CHECK), 0)
    for sock in (client, server):
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    threads = [
        threading.Thread(target=_direction, name="netwarden-splice-up", daemon=True,
                         args=(client, server, stats, True, errors, idle_timeout)),
        threading.Thread(target=_direction, name="netwarden-splice-down", daemon=True,
                         args=(server, client, stats, False, errors, idle_timeout)),
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    server.close()
    stats.error = errors[0] if errors else ""
    return stats
