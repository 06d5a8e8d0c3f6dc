"""User-mode proxy listeners that need no root: SOCKS5 and HTTP (CONNECT and
absolute-URI forwarding). Applications are pointed at them; they resolve names
themselves (remote DNS), ask the policy, connect, and hand over to the shared relay."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from netwarden.model.flow import host_port
from netwarden.proxy import http_proxy, kernel_relay, socks5
from netwarden.proxy.gate import Gate
from netwarden.proxy.handlers import forget_handler
from netwarden.proxy.inspecting import Inspector, inspect_connection
from netwarden.proxy.kernel_relay import Streams
from netwarden.proxy.limits import ConnectionLimit
from netwarden.proxy.relay import RelayStats, relay
from netwarden.proxy.upstream import open_upstream

log = logging.getLogger(__name__)


HEAD_TIMEOUT = 30.0
Accepted = Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[object, object, None]]


class Refused(Exception):
    def __init__(self, reply: socks5.Reply, message: str) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class ProxiedFlow:
    kind: str  # socks5 or http
    client: tuple[str, int]
    destination: tuple[str, int]
    stats: RelayStats


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
        proxy does); mark: SO_MARK of the upstream connections (needs CAP_NET_ADMIN), which
        redirect rules skip, so that a redirect covering their destination does not
        send them back into a proxy."""
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

    async def start(self, socks: list[tuple[str, int]], http: list[tuple[str, int]]) -> list[
        asyncio.Server
    ]:  # fmt: skip
        servers = []
        for kind, handler, addresses in (
            ("SOCKS5", self._socks, socks),
            ("HTTP proxy", self._http, http),
        ):
            for host, port in addresses:
                limit = ConnectionLimit(f"{kind} listener {host}:{port}", self._max_connections)
                servers.append(
                    await asyncio.start_server(
                        self._spawner(handler, limit), host, port, reuse_address=True
                    )
                )
        return servers

    def _spawner(
        self, handler: Handler, limit: ConnectionLimit
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self._looped(writer) or not limit.enter():
                writer.transport.abort()
                return
            task = asyncio.ensure_future(handler(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            task.add_done_callback(lambda _task: limit.leave())

        return spawn

    def _looped(self, writer: asyncio.StreamWriter) -> bool:
        peer = writer.get_extra_info("peername")
        if peer is None or (":" in str(peer[0]), int(peer[1])) not in self._own_ports:
            return False
        log.error(
            "redirection loop: this proxy's own upstream connection came back to it; "
            "give its upstream connections the mark the redirect rules skip (--mark)"
        )
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        forget_handler(self._tasks, task)

    async def _connect(self, host: str, port: int) -> tuple[
        tuple[asyncio.StreamReader, asyncio.StreamWriter], tuple[str, int]
    ]:  # fmt: skip
        """Resolve (remote DNS), ask the gate about each address, connect to the first
        allowed one that answers."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refused(socks5.Reply.HOST_UNREACHABLE, f"cannot resolve {host}: {exc}") from exc
        last: Refused = Refused(socks5.Reply.HOST_UNREACHABLE, f"no address for {host}")
        for _family, _type, _proto, _name, sockaddr in infos:
            address = str(ipaddress.ip_address(sockaddr[0]))
            reason = self.gate(address, port) if self.gate is not None else None
            if reason is not None:
                last = Refused(socks5.Reply.NOT_ALLOWED, reason)
                continue
            try:
                streams = await self._open(address, port)  # bounded by connect_timeout
            except ConnectionRefusedError as exc:
                last = Refused(socks5.Reply.CONNECTION_REFUSED, str(exc))
            except (OSError, TimeoutError) as exc:
                last = Refused(socks5.Reply.HOST_UNREACHABLE, str(exc) or "timed out")
            else:
                return streams, (address, port)
        raise last

    async def _open(self, address: str, port: int) -> Streams:
        """A connection to address:port from a socket with the proxy's mark, its local
        port known to the hop guard (until the handler's _forget)."""
        own: list[tuple[bool, int]] = []

        def remember(sock: socket.socket) -> None:
            own.append((sock.family == socket.AF_INET6, int(sock.getsockname()[1])))
            self._own_ports.add(own[0])

        try:
            try:
                sock = await open_upstream(
                    address, port, mark=self.mark, timeout=self.connect_timeout, on_bound=remember
                )
            except PermissionError:  # no CAP_NET_ADMIN for SO_MARK: say so once, go unmarked
                self._mark_refused()
                sock = await open_upstream(
                    address, port, timeout=self.connect_timeout, on_bound=remember
                )
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            if own:
                self._own_ports.discard(own[0])
            raise

    def _forget(self, upstream: Streams) -> None:
        """The upstream connection is done with: its port leaves the hop guard."""
        local = upstream[1].get_extra_info("sockname")
        if local is not None:
            self._own_ports.discard((":" in str(local[0]), int(local[1])))

    def _mark_refused(self) -> None:
        if self.mark:
            self.mark = 0
            log.warning(
                "cannot mark upstream connections (SO_MARK needs CAP_NET_ADMIN): a "
                "redirect covering their destinations would send them back into a "
                "proxy; exempt this proxy's user from such redirects"
            )

    async def _pass_on(self, kind: str, client: Streams, upstream: Streams,
                       destination: tuple[str, int], early: bytes) -> None:  # fmt: skip
        """What the client sent after its request (for absolute-URI HTTP, the request
        itself too), then both ways; the flow reported with every payload byte."""
        if self.inspector is not None:
            stats = await self._inspect(client, upstream, destination, early)
            self._report(kind, client[1], destination, stats)
            return
        if early:
            upstream[1].write(early)
        stats = await self._relay(client, upstream)
        stats.client_to_server += len(early)
        self._report(kind, client[1], destination, stats)

    async def _inspect(
        self, client: Streams, upstream: Streams, destination: tuple[str, int], early: bytes
    ) -> RelayStats:
        """The inspecting proxy's layers, as for redirected connections."""
        assert self.inspector is not None
        peer = client[1].get_extra_info("peername") or ("?", 0)
        client_sock, from_client = await kernel_relay.detach(client)
        server_sock, from_server = await kernel_relay.detach(upstream)
        if from_server:  # a server that spoke first: its words go on untouched
            client_sock.setblocking(False)
            await asyncio.get_running_loop().sock_sendall(client_sock, from_server)
        stats = await inspect_connection(
            client_sock,
            server_sock,
            (str(peer[0]), int(peer[1])),
            destination,
            self.inspector,
            self.idle_timeout,
            early + from_client,
        )
        stats.server_to_client += len(from_server)
        return stats

    async def _relay(self, client: Streams, upstream: Streams) -> RelayStats:
        """After the handshake nothing is inspected: the kernel fast path where there
        is one."""
        if kernel_relay.AVAILABLE:
            return await kernel_relay.relay_streams(client, upstream, self.idle_timeout)
        return await relay(client, upstream, self.idle_timeout)

    def _report(self, kind: str, writer: asyncio.StreamWriter, destination: tuple[str, int],
                stats: RelayStats) -> None:  # fmt: skip
        peer = writer.get_extra_info("peername") or ("?", 0)
        if stats.error:
            log.info("%s %s -> %s: %s", kind, host_port(peer), host_port(destination), stats.error)
        if self.on_flow is not None:
            self.on_flow(ProxiedFlow(kind, (str(peer[0]), int(peer[1])), destination, stats))

    async def _socks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = socks5.Socks5Server(require_auth=self.users is not None)
        request: socks5.ConnectRequest | None = None
        try:
            while request is None:
                data = await asyncio.wait_for(reader.read(4096), HEAD_TIMEOUT)
                if not data:
                    return
                for event in protocol.receive(data):
                    if isinstance(event, socks5.Failed):
                        writer.write(event.reply)
                        log.info("socks5: %s", event.message)
                        return
                    if isinstance(event, socks5.MethodChosen):
                        writer.write(event.reply)
                    elif isinstance(event, socks5.Credentials):
                        ok = self.users is not None and self.users.get(event.username) == (
                            event.password
                        )
                        writer.write(protocol.authenticated(ok))
                        if not ok:
                            return
                    else:
                        request = event
            destination = (request.host, request.port)
            try:
                upstream, destination = await self._connect(request.host, request.port)
            except Refused as exc:
                writer.write(socks5.reply(exc.reply))
                self._report("socks5", writer, destination, RelayStats(error=str(exc)))
                return
            try:
                bound = upstream[1].get_extra_info("sockname")
                writer.write(socks5.reply(socks5.Reply.SUCCEEDED, (str(bound[0]), int(bound[1]))))
                await self._pass_on(
                    "socks5", (reader, writer), upstream, destination, protocol.leftover()
                )
            finally:
                self._forget(upstream)
        except (OSError, TimeoutError) as exc:
            log.info("socks5: client %s", exc)
        finally:
            if not writer.is_closing():
                writer.close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while not (end := http_proxy.head_complete(buffer)):
                if len(buffer) > http_proxy.MAX_HEAD:
                    writer.write(http_proxy.BadRequest(431, "request head too large").response())
                    return
                data = await asyncio.wait_for(reader.read(4096), HEAD_TIMEOUT)
                if not data:
                    return
                buffer += data
            request = http_proxy.parse(buffer[:end])
            if isinstance(request, http_proxy.BadRequest):
                writer.write(request.response())
                return
            destination = (request.host, request.port)
            try:
                upstream, destination = await self._connect(request.host, request.port)
            except Refused as exc:
                status = 403 if exc.reply is socks5.Reply.NOT_ALLOWED else 502
                writer.write(http_proxy.BadRequest(status, str(exc)).response())
                self._report("http", writer, destination, RelayStats(error=str(exc)))
                return
            try:
                early = buffer[end:]
                if isinstance(request, http_proxy.Tunnel):
                    writer.write(http_proxy.ESTABLISHED)
                else:
                    early = request.head + early
                await self._pass_on("http", (reader, writer), upstream, destination, early)
            finally:
                self._forget(upstream)
        except (OSError, TimeoutError) as exc:
            log.info("http proxy: client %s", exc)
        finally:
            if not writer.is_closing():
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()
