"""A transparent proxy: accepts redirected connections, connects to where each was
going (with the proxy mark, so redirection skips it), and relays.

    netwarden redirect --dport 80 --to 127.0.0.1:15001
    netwarden proxy --listen 127.0.0.1:15001
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from netwarden.platform.select import original_destination
from netwarden.proxy.relay import RelayStats, relay

log = logging.getLogger(__name__)


def _unmapped(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") and "." in address else address


@dataclass(frozen=True, slots=True)
class FlowReport:
    client: tuple[str, int]
    destination: tuple[str, int]
    stats: RelayStats


class TransparentProxy:
    def __init__(
        self,
        mark: int,
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        on_flow: Callable[[FlowReport], None] | None = None,
    ) -> None:
        self.mark = mark
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_flow = on_flow
        self._tasks: set[asyncio.Task[None]] = set()  # handlers must stay referenced
        # Local ports of our own upstream connections (bound before connecting, so known
        # before the handshake): one arriving back at a listener means the redirection
        # loops, and it is refused instead of spinning (the hop guard).
        self._own_ports: set[tuple[bool, int]] = set()  # (IPv6?, port)
        self.loops = 0

    async def serve(
        self, listeners: list[tuple[str, int]], ready: Callable[[], None] | None = None
    ) -> None:
        """Listen on every address, call ready(), then serve until cancelled."""
        servers = [await asyncio.start_server(self._accepted, host, port, reuse_address=True)
                   for host, port in listeners]  # fmt: skip
        if ready is not None:
            ready()
        try:
            await asyncio.gather(*(server.serve_forever() for server in servers))
        finally:
            for server in servers:
                server.close()

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upstream(
        self, host: str, port: int
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], tuple[bool, int]]:
        """A connection to the original destination, and its local port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if self.mark and sys.platform == "linux":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        sock.setblocking(False)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        local_port = (family == socket.AF_INET6, int(sock.getsockname()[1]))
        self._own_ports.add(local_port)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (host, port)), self.connect_timeout
            )
            streams = await asyncio.open_connection(sock=sock)
        except BaseException:
            self._own_ports.discard(local_port)
            sock.close()
            raise
        return streams, local_port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        client = (_unmapped(str(peer[0])), int(peer[1]))
        if (":" in client[0], client[1]) in self._own_ports:
            self.loops += 1
            log.error(
                "redirection loop: this proxy's own connection came back to it; give its "
                "upstream connections the mark the redirect rules skip (--mark)"
            )
            writer.close()
            return
        try:
            destination = original_destination(conn)
        except OSError as exc:
            log.warning("%s: no original destination (%s)", client, exc)
            writer.close()
            return
        stats = RelayStats()
        try:
            upstream, local_port = await self._upstream(*destination)
        except (OSError, TimeoutError) as exc:
            stats.error = f"cannot reach {destination[0]}:{destination[1]}: {exc}"
            writer.close()
        else:
            try:
                stats = await relay((reader, writer), upstream, self.idle_timeout)
            finally:
                self._own_ports.discard(local_port)
        if stats.error:
            log.info("%s -> %s: %s", client, destination, stats.error)
        if self.on_flow is not None:
            self.on_flow(FlowReport(client, destination, stats))
