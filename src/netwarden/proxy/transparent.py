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
import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netwarden.platform.select import original_destination
from netwarden.proxy.relay import RelayStats, relay
from netwarden.proxy.upstream import Hop, open_upstream

log = logging.getLogger(__name__)


def _unmapped(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") and "." in address else address


@dataclass(frozen=True, slots=True)
class FlowReport:
    client: tuple[str, int]
    destination: tuple[str, int]
    stats: RelayStats


IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75


def _listener(host: str, port: int, tproxy: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if tproxy:  # accept connections addressed to other hosts (TPROXY); needs root
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


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
    ) -> None:
        self.mark = mark
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

    async def serve(
        self, listeners: list[tuple[str, int]], ready: Callable[[], None] | None = None
    ) -> None:
        """Listen on every address, call ready(), then serve until cancelled."""
        asyncio.get_running_loop().set_exception_handler(_quiet_cancelled_accept)
        sockets: list[socket.socket] = []
        try:
            for host, port in listeners:
                sockets.append(_listener(host, port, self.tproxy))
            if ready is not None:
                ready()
            await asyncio.gather(*(self._accept_loop(sock) for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(listener)
            task = asyncio.ensure_future(self._handle(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("proxy handler failed: %r", task.exception())

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
        if (":" in client[0], client[1]) in self._own_ports:
            log.error(
                "redirection loop: this proxy's own connection came back to it; give its "
                "upstream connections the mark the redirect rules skip (--mark)"
            )
            conn.close()
            return
        try:
            destination = original_destination(conn)
        except OSError as exc:
            log.warning("%s: no original destination (%s)", client, exc)
            conn.close()
            return
        try:
            upstream, local_port = await self._upstream(*destination)
        except (OSError, TimeoutError) as exc:
            conn.close()
            stats = RelayStats(error=f"cannot reach {destination[0]}:{destination[1]}: {exc}")
        else:
            try:
                stats = await self._relay(conn, upstream)
            finally:
                self._own_ports.discard(local_port)
        if stats.error:
            log.info("%s -> %s: %s", client, destination, stats.error)
        if self.on_flow is not None:
            self.on_flow(FlowReport(client, destination, stats))

    async def _relay(self, conn: socket.socket, upstream: socket.socket) -> RelayStats:
        if self.fast_path:
            return await _in_thread(conn, upstream, self.idle_timeout)
        client = await asyncio.open_connection(sock=conn)
        server = await asyncio.open_connection(sock=upstream)
        return await relay(client, server, self.idle_timeout)


async def _in_thread(conn: socket.socket, upstream: socket.socket, idle: float) -> RelayStats:
    """The splice relay, in threads of its own (not a pool: flows last long)."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[RelayStats] = loop.create_future()

    def done(stats: RelayStats) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
            loop.call_soon_threadsafe(finished.set_result, stats)

    if sys.platform != "linux":
        raise RuntimeError("the splice fast path is Linux only")
    _start_splice(conn, upstream, idle, done)
    return await finished


def _start_splice(conn: socket.socket, upstream: socket.socket, idle: float,
                  done: Callable[[RelayStats], None]) -> None:  # fmt: skip
    if sys.platform == "linux":
        from netwarden.proxy.splice import start_relay

        start_relay(conn, upstream, idle, done)
    else:
        raise RuntimeError("the splice fast path is Linux only")
