"""User-mode proxy listeners that need no root: SOCKS5 and HTTP (CONNECT and
absolute-URI forwarding). Applications are pointed at them; they resolve names
themselves (remote DNS), ask the policy, connect, and hand over to the I/O module that
inspects or splices (proxy/inspecting.py), which drives their handshakes too
(proxy/handshakes.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from netwarden.model.flow import host_port
from netwarden.proxy.gate import Gate
from netwarden.proxy.handlers import forget_handler
from netwarden.proxy.handshakes import Handshake, HttpProxyHandshake, Refusal, Socks5Handshake
from netwarden.proxy.inspecting import (
    Inspector,
    NotHanded,
    Refused,
    inspect_connection,
    relay_untouched,
    shake_hands,
)
from netwarden.proxy.limits import ConnectionLimit
from netwarden.proxy.listeners import listening_socket
from netwarden.proxy.relay import RelayStats
from netwarden.proxy.upstream import open_upstream

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ProxiedFlow:
    kind: str  # socks5 or http
    client: tuple[str, int]
    destination: tuple[str, int]
    stats: RelayStats


class Listener:
    """One SOCKS5 or HTTP proxy listener: accepts connections and hands each to the
    proxy's handler, within its connection limit."""

    def __init__(
        self, sock: socket.socket, kind: str, proxy: UserModeProxy, limit: ConnectionLimit
    ) -> None:
        self.sock, self.kind, self.proxy, self.limit = sock, kind, proxy, limit

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self.sock)
            if self.proxy.looped(peer) or not self.limit.enter():
                conn.close()
                continue
            self.proxy.spawn(self.proxy.handle(conn, peer, self.kind), self.limit)

    def close(self) -> None:
        self.sock.close()


class UserModeProxy:
    def __init__(
        self,
        gate: Gate | None = None,
        users: dict[str, str] | None = None,  # SOCKS5 username -> password; None: no auth
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        on_flow: Callable[[ProxiedFlow], None] | None = None,
        mark: int = 0,
        max_connections: int | None = None,
        inspector: Inspector | None = None,
    ) -> None:
        """inspector: look inside what the clients send through (as the transparent
        proxy does); mark: SO_MARK of the upstream connections (needs CAP_NET_ADMIN),
        which redirect rules skip, so that a redirect covering their destination does
        not send them back into a proxy."""
        self.gate = gate
        self.inspector = inspector
        self.mark = mark
        self._max_connections = max_connections
        # Local ports of this proxy's own upstream connections: one arriving back at a
        # listener is a redirection loop, refused instead of relayed (the hop guard).
        self._own_ports: set[tuple[bool, int]] = set()
        self.users = users
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_flow = on_flow
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self, socks: list[tuple[str, int]], http: list[tuple[str, int]]
    ) -> list[Listener]:
        listeners: list[Listener] = []
        try:
            for kind, name, addresses in (
                ("socks5", "SOCKS5", socks),
                ("http", "HTTP proxy", http),
            ):
                for host, port in addresses:
                    limit = ConnectionLimit(f"{name} listener {host}:{port}", self._max_connections)
                    listeners.append(Listener(listening_socket(host, port), kind, self, limit))
        except OSError:
            for listener in listeners:
                listener.close()
            raise
        return listeners

    def spawn(self, handler: Coroutine[object, object, None], limit: ConnectionLimit) -> None:
        task = asyncio.ensure_future(handler)
        self._tasks.add(task)
        task.add_done_callback(lambda done: forget_handler(self._tasks, done))
        task.add_done_callback(lambda _task: limit.leave())

    def looped(self, peer: tuple[object, ...]) -> bool:
        if (":" in str(peer[0]), int(str(peer[1]))) not in self._own_ports:
            return False
        log.error(
            "redirection loop: this proxy's own upstream connection came back to it; "
            "give its upstream connections the mark the redirect rules skip (--mark)"
        )
        return True

    async def handle(self, conn: socket.socket, peer: tuple[object, ...], kind: str) -> None:
        client = (str(peer[0]), int(str(peer[1])))
        handshake: Handshake = (
            Socks5Handshake(self.users) if kind == "socks5" else HttpProxyHandshake()
        )
        own: list[tuple[bool, int]] = []
        try:
            handed = await shake_hands(
                conn, handshake, lambda host, port: self._connect(host, port, own), HEAD_TIMEOUT
            )
            if isinstance(handed, NotHanded):
                if handed.destination is None:  # the client's request was at fault
                    log.info("%s: client %s: %s", kind, host_port(client), handed.reason)
                else:  # its server could not be had: a flow that failed
                    self._report(kind, client, handed.destination, RelayStats(error=handed.reason))
                conn.close()
                return
            if self.inspector is not None:
                stats = await inspect_connection(
                    conn,
                    handed.upstream,
                    client,
                    handed.destination,
                    self.inspector,
                    self.idle_timeout,
                    handed.early,
                )
            else:
                stats = await relay_untouched(
                    conn, handed.upstream, handed.early, self.idle_timeout
                )
            self._report(kind, client, handed.destination, stats)
        except OSError as exc:
            log.info("%s: client %s: %s", kind, host_port(client), exc)
            conn.close()
        finally:
            for port in own:
                self._own_ports.discard(port)

    async def _connect(
        self, host: str, port: int, own: list[tuple[bool, int]]
    ) -> tuple[socket.socket, tuple[str, int]]:
        """Resolve (remote DNS), ask the gate about each address, connect to the first
        allowed one that answers; Refused says why none did."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refused(Refusal.UNREACHABLE, f"cannot resolve {host}: {exc}") from exc
        last = Refused(Refusal.UNREACHABLE, f"no address for {host}")
        for _family, _type, _proto, _name, sockaddr in infos:
            address = str(ipaddress.ip_address(sockaddr[0]))
            reason = self.gate(address, port) if self.gate is not None else None
            if reason is not None:
                last = Refused(Refusal.POLICY, reason)
                continue
            try:
                return await self._open(address, port, own), (address, port)
            except ConnectionRefusedError as exc:
                last = Refused(Refusal.REFUSED, str(exc))
            except (OSError, TimeoutError) as exc:
                last = Refused(Refusal.UNREACHABLE, str(exc) or "timed out")
        raise last

    async def _open(self, address: str, port: int, own: list[tuple[bool, int]]) -> socket.socket:
        """A connection to address:port from a socket with the proxy's mark, its local
        port known to the hop guard (until the handler ends)."""

        def remember(sock: socket.socket) -> None:
            own.append((sock.family == socket.AF_INET6, int(sock.getsockname()[1])))
            self._own_ports.add(own[-1])

        try:
            return await open_upstream(
                address, port, mark=self.mark, timeout=self.connect_timeout, on_bound=remember
            )
        except PermissionError:  # no CAP_NET_ADMIN for SO_MARK: say so once, go unmarked
            self._mark_refused()
            return await open_upstream(
                address, port, timeout=self.connect_timeout, on_bound=remember
            )

    def _mark_refused(self) -> None:
        if self.mark:
            self.mark = 0
            log.warning(
                "cannot mark upstream connections (SO_MARK needs CAP_NET_ADMIN): a "
                "redirect covering their destinations would send them back into a "
                "proxy; exempt this proxy's user from such redirects"
            )

    def _report(
        self, kind: str, client: tuple[str, int], destination: tuple[str, int], stats: RelayStats
    ) -> None:
        if stats.error:
            log.info(
                "%s %s -> %s: %s", kind, host_port(client), host_port(destination), stats.error
            )
        if self.on_flow is not None:
            self.on_flow(ProxiedFlow(kind, client, destination, stats))
