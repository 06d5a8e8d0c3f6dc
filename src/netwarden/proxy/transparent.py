"""A transparent proxy: accepts redirected connections, connects to where each was
going (with the proxy mark, so redirection skips it), and relays.

    netwarden redirect --dport 80 --to 127.0.0.1:15001
    netwarden proxy --listen 127.0.0.1:15001

Connections are accepted as plain sockets, so no byte is read before a relay takes
them: the kernel fast path (splice) or the asyncio relay, which later inspection
layers will sit on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netwarden.model import Endpoint, RelayLink
from netwarden.model.flow import host_port
from netwarden.proxy.handlers import forget_handler
from netwarden.proxy.inspecting import Inspector, inspect_connection
from netwarden.proxy.kernel_relay import kernel_relay
from netwarden.proxy.limits import ConnectionLimit
from netwarden.proxy.listeners import listening_socket
from netwarden.proxy.relay import RelayStats, relay
from netwarden.proxy.upstream import Hop, connect_direct, open_upstream
from netwarden.proxy.workers import Workers

log = logging.getLogger(__name__)


def _unmapped(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") and "." in address else address


@dataclass(frozen=True, slots=True)
class FlowReport:
    client: tuple[str, int]
    destination: tuple[str, int]
    stats: RelayStats


ACCEPTORS = 2  # threads waiting in accept() on each listener
REPORT_INTERVAL = 0.05  # how often flows relayed on threads are reported
ACCEPT_AGAIN = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED)


def _platform_original_destination(sock: socket.socket) -> tuple[str, int]:
    """For a proxy made without the engine (tests, library use)."""
    from netwarden.platform.select import original_destination

    return original_destination(sock)


def _endpoint(address: tuple[Any, ...]) -> Endpoint:
    return Endpoint(_unmapped(str(address[0])), int(address[1]))


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return once


def _quiet_cancelled_accept(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A connection arriving while an accept is being cancelled (at shutdown) makes
    asyncio complain that the cancelled future cannot take it; nothing is lost."""
    handle = str(context.get("handle", ""))
    if isinstance(context.get("exception"), asyncio.InvalidStateError) and "_sock_accept" in (
        handle
    ):
        return
    loop.default_exception_handler(context)


class TransparentProxy:
    def __init__(
        self,
        mark: int,
        *,
        fast_path: bool = True,
        tproxy: bool = False,
        chain: tuple[Hop, ...] = (),
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        on_flow: Callable[[FlowReport], None] | None = None,
        on_link: Callable[[RelayLink], None] | None = None,
        max_connections: int | None = None,
        original_destination: Callable[[socket.socket], tuple[str, int]] | None = None,
        inspector: Inspector | None = None,
    ) -> None:
        """on_flow gets each flow once it has ended; on_link (called from any thread)
        each flow's sockets once it is connected upstream, for the monitor;
        original_destination: the platform's lookup (the engine's backend gives it);
        inspector: look inside connections (protocol, HTTP rules, TLS interception)."""
        self.inspector = inspector
        self.original_destination = original_destination or _platform_original_destination
        self.mark = mark
        self.on_link = on_link
        self.fast_path = fast_path and sys.platform == "linux"
        self.chain = chain
        self.tproxy = tproxy
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_flow = on_flow
        self._tasks: set[asyncio.Task[None]] = set()  # handlers must stay referenced
        # Local ports of our own upstream connections (bound before connecting, so known
        # before the handshake): one arriving back at a listener means the redirection
        # loops, and it is refused instead of spinning (the hop guard).
        self._own_ports: set[tuple[bool, int]] = set()  # (IPv6?, port)
        self._max_connections = max_connections
        self._limits: dict[int, ConnectionLimit] = {}  # listener fd -> its bound

    async def serve(
        self, listeners: list[tuple[str, int]], ready: Callable[[], None] | None = None
    ) -> None:
        """Listen on every address, call ready(), then serve until cancelled."""
        asyncio.get_running_loop().set_exception_handler(_quiet_cancelled_accept)
        sockets: list[socket.socket] = []
        try:
            for host, port in listeners:
                sockets.append(listening_socket(host, port, self.tproxy))
                self._limits[sockets[-1].fileno()] = ConnectionLimit(
                    f"transparent listener {host}:{port}", self._max_connections
                )
            if ready is not None:
                ready()
            if self.fast_path and not self.chain and self.inspector is None:
                await self._serve_on_threads(sockets)
            else:
                await asyncio.gather(*(self._accept_loop(sock) for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    async def _serve_on_threads(self, listeners: list[socket.socket]) -> None:
        """The plain fast path: connections are accepted, connected upstream and spliced
        on threads, with no event loop between a connection arriving and its bytes
        moving (that hop alone added a few hundred microseconds to every connection).
        Threads wait in accept() themselves and each handles what it accepted (see
        _accept_one): no wake-up between a connection arriving and its handling."""
        workers = Workers()
        finished: collections.deque[FlowReport] = collections.deque()
        for sock in listeners:
            sock.setblocking(True)
            for _ in range(ACCEPTORS):
                workers.submit(functools.partial(self._accept_one, sock, workers,
                                                 finished.append))  # fmt: skip
        try:
            while True:  # reports are collected, not each sent with a wake-up of the loop
                await asyncio.sleep(REPORT_INTERVAL)
                while finished and self.on_flow is not None:
                    self.on_flow(finished.popleft())
        finally:
            for sock in listeners:
                with contextlib.suppress(OSError):  # wakes every blocked accept()
                    sock.shutdown(socket.SHUT_RDWR)
            workers.close()
            while finished and self.on_flow is not None:
                self.on_flow(finished.popleft())

    def _accept_one(self, listener: socket.socket, workers: Workers,
                    report: Callable[[FlowReport], object]) -> None:  # fmt: skip
        """Wait for one connection and handle it; another thread takes over the waiting
        once this one waits for the upstream handshake (waking it sooner would compete
        for the GIL with the new connection)."""
        successor = _once(functools.partial(workers.submit, functools.partial(
            self._accept_one, listener, workers, report)))  # fmt: skip
        try:
            conn, peer = listener.accept()
        except OSError as exc:
            if exc.errno in ACCEPT_AGAIN:
                if exc.errno != errno.ECONNABORTED:
                    time.sleep(0.1)  # out of descriptors or memory: the backlog waits
                successor()
            return  # otherwise the listener was shut down
        limit = self._limits[listener.fileno()]
        if not limit.enter():
            conn.close()
            successor()
            return
        try:
            self._handle_blocking(conn, peer, report, successor)
        finally:
            limit.leave()
            successor()

    def _handle_blocking(self, conn: socket.socket, peer: tuple[str, int],
                         report: Callable[[FlowReport], object], successor: Callable[[], None],
                         ) -> None:  # fmt: skip
        client = (_unmapped(str(peer[0])), int(peer[1]))
        destination = self._destination(conn, client)
        if destination is None:
            return
        bound: list[tuple[bool, int]] = []

        def remember(sock: socket.socket) -> None:
            bound.append((sock.family == socket.AF_INET6, int(sock.getsockname()[1])))
            self._own_ports.add(bound[0])
            successor()  # runs while this thread waits for the handshake

        def finished(stats: RelayStats) -> None:
            if bound:
                self._own_ports.discard(bound[0])
            self._report(FlowReport(client, destination, stats), report)

        try:
            upstream = connect_direct(*destination, mark=self.mark,
                                      timeout=self.connect_timeout, on_bound=remember)  # fmt: skip
        except OSError as exc:
            conn.close()
            error = f"cannot reach {destination[0]}:{destination[1]}: {exc}"
            finished(RelayStats(error=error))
            return
        self._tell_link(conn, client, upstream, destination)
        if sys.platform == "linux":
            from netwarden.proxy.splice import relay_here

            relay_here(conn, upstream, self.idle_timeout, finished)

    def _destination(self, conn: socket.socket, client: tuple[str, int]) -> tuple[str, int] | None:
        """Where the connection was going; None (and the connection closed) when it is
        our own connection come back (a redirection loop) or was not redirected."""
        if (":" in client[0], client[1]) in self._own_ports:
            log.error(
                "redirection loop: this proxy's own connection came back to it; give its "
                "upstream connections the mark the redirect rules skip (--mark)"
            )
            conn.close()
            return None
        try:
            if self.tproxy and sys.platform == "linux":
                # Its answers to an application on this host must not be taken for the
                # application's own packets by a tproxy rule: the proxy mark skips them.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            return self.original_destination(conn)
        except OSError as exc:
            log.warning("%s: no original destination (%s)", host_port(client), exc)
            conn.close()
            return None

    def _tell_link(self, conn: socket.socket, client: tuple[str, int],
                   upstream: socket.socket, destination: tuple[str, int]) -> None:  # fmt: skip
        if self.on_link is None:
            return
        with contextlib.suppress(OSError):  # a connection already gone: nothing to link
            self.on_link(RelayLink(
                client=Endpoint(*client), listener=_endpoint(conn.getsockname()),
                upstream=_endpoint(upstream.getsockname()),
                upstream_remote=_endpoint(upstream.getpeername()),
                destination=Endpoint(*destination), proxy_pid=os.getpid(),
            ))  # fmt: skip

    def _report(self, flow: FlowReport, report: Callable[[FlowReport], object] | None) -> None:
        if flow.stats.error:
            log.info(
                "%s -> %s: %s",
                host_port(flow.client),
                host_port(flow.destination),
                flow.stats.error,
            )
        if report is not None:
            report(flow)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limit = self._limits[listener.fileno()]
        while True:
            conn, peer = await loop.sock_accept(listener)
            if not limit.enter():
                conn.close()
                continue
            task = asyncio.ensure_future(self._handle(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            task.add_done_callback(lambda _task: limit.leave())

    def _finished(self, task: asyncio.Task[None]) -> None:
        forget_handler(self._tasks, task)

    async def _upstream(self, host: str, port: int) -> tuple[socket.socket, tuple[bool, int]]:
        """A connected socket to the original destination (through the upstream chain, if
        any), and its (IPv6?, port)."""
        bound: list[tuple[bool, int]] = []

        def remember(sock: socket.socket) -> None:
            bound.append((sock.family == socket.AF_INET6, int(sock.getsockname()[1])))
            self._own_ports.add(bound[0])

        try:
            sock = await open_upstream(host, port, self.chain, mark=self.mark,
                                       timeout=self.connect_timeout, on_bound=remember)  # fmt: skip
        except BaseException:
            if bound:
                self._own_ports.discard(bound[0])
            raise
        return sock, bound[0]

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        client = (_unmapped(str(peer[0])), int(peer[1]))
        destination = self._destination(conn, client)
        if destination is None:
            return
        try:
            upstream, local_port = await self._upstream(*destination)
        except (OSError, TimeoutError) as exc:
            conn.close()
            stats = RelayStats(error=f"cannot reach {destination[0]}:{destination[1]}: {exc}")
        else:
            self._tell_link(conn, client, upstream, destination)
            try:
                if self.inspector is not None:
                    stats = await inspect_connection(
                        conn, upstream, client, destination, self.inspector, self.idle_timeout
                    )
                else:
                    stats = await self._relay(conn, upstream)
            finally:
                self._own_ports.discard(local_port)
        self._report(FlowReport(client, destination, stats), self.on_flow)

    async def _relay(self, conn: socket.socket, upstream: socket.socket) -> RelayStats:
        if self.fast_path:
            return await kernel_relay(conn, upstream, self.idle_timeout)
        client = await asyncio.open_connection(sock=conn)
        server = await asyncio.open_connection(sock=upstream)
        return await relay(client, server, self.idle_timeout)
