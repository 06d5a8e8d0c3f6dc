"""The kernel fast path: bytes move socket -> pipe -> socket with splice(2) and never
enter Python. Used once a flow needs no more inspection; Linux only.

One thread relays both directions of a flow with non-blocking splices and poll(2): no
second thread to wake (a wake-up and a GIL hand-over cost more than the whole relay of
a small answer), and neither direction can block the other. The end of one direction
is carried across as a half-close, exactly like the asyncio relay.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable

from netwarden.proxy.relay import RelayStats

assert sys.platform == "linux", "splice(2) is Linux only"

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
SPLICE_F_MOVE, SPLICE_F_NONBLOCK = 1, 2  # not SPLICE_F_MORE: it corks small writes 200 ms
FLAGS = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
IDLE_CHECK = 5.0  # a quiet flow wakes up this often to check for idleness


class _Pipe:
    """A pipe a thread keeps from flow to flow (making one costs several syscalls on
    every new connection); it is empty whenever a flow ends normally."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe only costs speed
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, PIPE_SIZE)

    def close(self) -> None:
        for fd in (self.read_end, self.write_end):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # the thread that kept it has ended
        self.close()


_kept = threading.local()


def _thread_pipes() -> list[_Pipe]:
    pipes: list[_Pipe] | None = getattr(_kept, "pipes", None)
    if pipes is None:
        pipes = _kept.pipes = [_Pipe(), _Pipe()]
    return pipes


class _Direction:
    def __init__(self, source: socket.socket, target: socket.socket, pipe: _Pipe,
                 upstream: bool) -> None:  # fmt: skip
        self.source, self.target, self.pipe, self.upstream = source, target, pipe, upstream
        self.pending = 0  # bytes in the pipe, not yet written to the target
        self.moved = 0
        self.ended = False  # source closed and everything written: half-close carried

    def step(self) -> bool:
        """Move what can move without blocking; True when something did."""
        progress = False
        if not self.pending and not self.ended:
            try:
                count = os.splice(self.source.fileno(), self.pipe.write_end, PIPE_SIZE,
                                  flags=FLAGS)  # fmt: skip
            except BlockingIOError:
                count = -1
            if count == 0:
                self.ended = True
                with contextlib.suppress(OSError):
                    self.target.shutdown(socket.SHUT_WR)
                return True
            if count > 0:
                self.pending = count
                progress = True
        while self.pending:
            try:
                written = os.splice(self.pipe.read_end, self.target.fileno(), self.pending,
                                    flags=FLAGS)  # fmt: skip
            except BlockingIOError:
                break
            self.pending -= written
            self.moved += written
            progress = True
        return progress

    def interest(self) -> tuple[socket.socket, int] | None:
        if self.ended:
            return None
        if self.pending:
            return self.target, select.POLLOUT
        return self.source, select.POLLIN


def relay_here(
    client: socket.socket,
    server: socket.socket,
    idle_timeout: float,
    done: Callable[[RelayStats], None],
) -> None:
    """Relay until both directions have ended, in this thread; then close both sockets
    and call done(stats)."""
    stats = RelayStats()
    pipes = _thread_pipes()
    directions = (_Direction(client, server, pipes[0], True),
                  _Direction(server, client, pipes[1], False))  # fmt: skip
    for sock in (client, server):
        sock.setblocking(False)
    try:
        _pump(directions, stats, idle_timeout)
    except OSError as exc:  # TimeoutError included
        stats.error = str(exc) if isinstance(exc, TimeoutError) else (
            f"{type(exc).__name__}: {exc.strerror or exc}")  # fmt: skip
        if any(d.pending for d in directions):
            _kept.pipes = None  # they hold bytes of this flow
            for pipe in pipes:
                pipe.close()
    finally:
        stats.client_to_server = directions[0].moved
        stats.server_to_client = directions[1].moved
        client.close()
        server.close()
    done(stats)


def _pump(directions: tuple[_Direction, _Direction], stats: RelayStats,
          idle_timeout: float) -> None:  # fmt: skip
    poller = select.poll()
    registered: dict[int, int] = {}
    upstream, downstream = directions
    while True:
        if upstream.step() | downstream.step():  # both, always
            while upstream.step() | downstream.step():  # while bytes keep coming
                pass
            stats.last_activity = time.monotonic()
        wanted: dict[int, int] = {}
        for direction in directions:
            interest = direction.interest()
            if interest is not None:
                fd = interest[0].fileno()
                wanted[fd] = wanted.get(fd, 0) | interest[1]
        if not wanted:
            return
        for fd in registered.keys() - wanted.keys():
            poller.unregister(fd)
        for fd, events in wanted.items():
            if registered.get(fd) != events:
                poller.register(fd, events)
        registered = wanted
        ready = poller.poll(IDLE_CHECK * 1000)
        if not ready and time.monotonic() - stats.last_activity >= idle_timeout:
            raise TimeoutError(f"idle for {idle_timeout:.0f} s")
        for fd, event in ready:
            if event & (select.POLLERR | select.POLLNVAL):
                error = _socket_error(directions, fd)
                if error:
                    raise OSError(error, os.strerror(error))


def _socket_error(directions: tuple[_Direction, _Direction], fd: int) -> int:
    for direction in directions:
        for sock in (direction.source, direction.target):
            if sock.fileno() == fd:
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return 0


def start_relay(
    client: socket.socket,
    server: socket.socket,
    idle_timeout: float,
    done: Callable[[RelayStats], None],
) -> None:
    """relay_here in a thread of its own."""
    threading.Thread(target=relay_here, args=(client, server, idle_timeout, done),
                     daemon=True, name="netwarden-splice").start()  # fmt: skip
