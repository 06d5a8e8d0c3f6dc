"""The I/O module for inspected connections: reads the client's first bytes, lets the
inspection decide, and drives the chosen sans-io layer (HTTP filter, TLS interception)
with the two sockets, carrying out its commands. When nothing needs looking at, the
connection goes to the splice fast path with the bytes already read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from netwarden.inspect.commands import (
    Close,
    Command,
    Detected,
    EndOfData,
    HttpExchange,
    Observed,
    Relay,
    Send,
    Side,
    StreamBlocked,
    TlsFailed,
    TlsIntercepted,
)
from netwarden.inspect.http1 import Http1Filter
from netwarden.inspect.http2 import Http2Filter
from netwarden.inspect.identify import Identification, Identifier
from netwarden.inspect.scanning import ContentScanning, Scanner
from netwarden.inspect.stream_scan import StreamScan
from netwarden.inspect.tls_intercept import Contexts, Layer, TlsInterception, Untouched
from netwarden.model import Endpoint
from netwarden.model.connect import StreamData
from netwarden.model.flow import host_port
from netwarden.policy.inspect_model import HttpRule, InspectPolicy
from netwarden.proxy.handshakes import Handover, Handshake, OpenServer, Refusal
from netwarden.proxy.kernel_relay import AVAILABLE as SPLICE_AVAILABLE
from netwarden.proxy.kernel_relay import kernel_relay
from netwarden.proxy.pacing import UNLIMITED, Buckets, Pacing, TokenBucket
from netwarden.proxy.relay import RelayStats
from netwarden.tls.passthrough import PassthroughMemory

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# Reads land in a buffer of the thread's, and only what came is copied out: recv(n)
# allocates n bytes for every read (for READ_SIZE: an mmap, an mremap to what came,
# an munmap, and page faults over the fresh pages).
_read_buffers = threading.local()
SCAN_WORKERS = 64  # connections whose layers wait on a scanning daemon at once
PACE_LOOKUP = 2.0  # seconds a connection's process is looked for (for its rate limits)
IDLE_CHECK = 5.0
HTTP_ALPN = ("", "http/1.1")

Address = tuple[str, int]


Learnt = Identification | HttpExchange | TlsIntercepted | TlsFailed | StreamBlocked | Detected


@dataclass(frozen=True, slots=True)
class InspectEvent:
    """Something inspection learnt about a connection."""

    client: Address
    destination: Address
    what: Learnt


INSPECT_KINDS = {
    StreamBlocked: "stream_blocked",
    HttpExchange: "http_exchange",
    TlsIntercepted: "tls_intercepted",
    TlsFailed: "tls_failed",
    Detected: "detection",
}


def event_record(event: InspectEvent) -> dict[str, object] | None:
    """One NDJSON line for what inspection learnt (None for the identification, which
    goes with the flow's own line)."""
    kind = INSPECT_KINDS.get(type(event.what))
    if kind is None:
        return None
    record: dict[str, object] = {
        "kind": kind,
        "client": host_port(event.client),
        "destination": host_port(event.destination),
    }
    for name in event.what.__slots__:
        value = getattr(event.what, name)
        record[name] = value.value if isinstance(value, enum.Enum) else value
    return record


class InspectSetupError(Exception):
    """Inspection cannot start as configured (no CA for interception); says why."""


def build_inspector(
    settings: InspectPolicy,
    on_event: Callable[[InspectEvent], None],
    identify: bool = False,
    stream: Callable[[StreamData], str] | None = None,
    client_program: Callable[[Address, Address], str] | None = None,
    pacing: Pacing | None = None,
) -> Inspector | None:
    """The inspection a policy's [inspect] section asks for (identification alone when
    identify is set and the section asks for nothing; the rate limits of pacing); None
    when none of these."""
    if not (settings.enabled or identify or stream or pacing):
        return None
    contexts = memory = None
    if settings.intercept_tls:
        from netwarden.tls.ca import CaError, ca_directory, load
        from netwarden.tls.contexts import TlsContexts
        from netwarden.tls.leaves import LeafStore

        directory = ca_directory()
        try:
            ca = load(directory)
        except CaError as exc:
            raise InspectSetupError(f"intercept_tls needs netwarden's CA: {exc}") from None
        contexts = TlsContexts(LeafStore(ca, directory / "leaves"), settings.upstream_ca)
        memory = PassthroughMemory(directory / "passthrough.json", settings.pinning_memory)
    inspector = Inspector(
        settings, contexts, memory, on_event, client_program, stream, content_scanning(settings)
    )
    inspector.pacing = pacing
    return inspector


def content_scanning(settings: InspectPolicy) -> ContentScanning | None:
    """The scanners the policy's [inspect.scan] and [[inspect.dlp]] name (None: none)."""
    if not settings.scans:
        return None
    from netwarden.inspect.clamd import ClamdScanner
    from netwarden.inspect.dlp import DlpScanner
    from netwarden.inspect.scanning import EicarScanner

    scan = settings.scan
    scanners: list[Scanner] = []
    if "eicar" in scan.scanners:
        scanners.append(EicarScanner(scan.action, scan.bodies))
    if "clamd" in scan.scanners:
        scanners.append(ClamdScanner(scan.clamd, scan.action, scan.on_error, scan.bodies))
    if settings.dlp:
        scanners.append(DlpScanner(settings.dlp))
    return ContentScanning(
        scanners, scan.hold_back, scan.max_size, blocking="clamd" in scan.scanners
    )


class Inspector:
    """What the inspecting proxy knows: the policy's [inspect] section, the TLS contexts
    (when it intercepts) and the passthrough memory."""

    def __init__(
        self,
        policy: InspectPolicy,
        contexts: Contexts | None = None,
        memory: PassthroughMemory | None = None,
        on_event: Callable[[InspectEvent], None] | None = None,
        client_program: Callable[[Address, Address], str] | None = None,
        stream: Callable[[StreamData], str] | None = None,
        scanning: ContentScanning | None = None,
    ) -> None:
        """stream: the STREAM layer (the callouts' verdict on data passed on: the name
        of the callout that blocks it, or "")."""
        self.stream = stream
        self.scanning = scanning
        self.pacing: Pacing | None = None  # rate limits of programs
        self.workers: ThreadPoolExecutor | None = None
        if scanning is not None and scanning.blocking:  # layers that wait on a daemon
            self.workers = ThreadPoolExecutor(SCAN_WORKERS, thread_name_prefix="netwarden-scan")
        self.policy = policy
        self.contexts = contexts
        self.memory = memory
        self.on_event = on_event
        self.client_program = client_program  # "" while not known

    def tell(self, client: Address, destination: Address, what: Learnt) -> None:
        if self.on_event is not None:
            self.on_event(InspectEvent(client, destination, what))

    def clients(self, client: Address, destination: Address) -> tuple[str, ...]:
        """Who the passthrough memory knows a client by: its program's executable when
        the engine's flow events named it already, and its address."""
        program = self.client_program(client, destination) if self.client_program else ""
        return (program, client[0]) if program else (client[0],)

    def layer_for(
        self,
        found: Identification,
        first: bytes,
        client: Address,
        destination: Address,
    ) -> Layer | TlsInterception | None:
        """The layer to drive, or None: relay untouched (by the kernel)."""
        observe = self.stream is not None
        scanning = self.scanning
        paced = (
            self.pacing is not None and self.pacing.buckets_for(client, destination) != UNLIMITED
        )
        untouched: Layer | None = Untouched(observe) if observe or paced else None
        if found.hello is not None:
            host = found.server_name
            if (
                not self.policy.intercept_tls
                or self.contexts is None
                or self.policy.passes_through(host, destination[0])
            ):
                return untouched
            if self.memory is not None and self.memory.passes(
                self.clients(client, destination), host or destination[0]
            ):
                return untouched
            rules = self.policy.http
            raw = self._raw_layer(observe)
            return TlsInterception(
                found.hello,
                first,
                destination[0],
                self.contexts,
                lambda alpn, host: _http_layer(rules, alpn, host, observe, scanning, raw),
            )
        if found.protocol == "http" and (self.policy.http or observe or scanning):
            return Http1Filter(self.policy.http, destination[0], observe, scanning)
        return self._raw_layer(observe) or untouched

    def _raw_layer(self, observe: bool) -> Layer | None:
        """For bytes that are not HTTP: scanned when the policy scans streams."""
        if self.scanning is not None and self.policy.scan.streams:
            return StreamScan(self.scanning, observe)
        return None


def _http_layer(
    rules: tuple[HttpRule, ...],
    alpn: str,
    host: str,
    observe: bool,
    scanning: ContentScanning | None,
    raw: Layer | None,
) -> Layer:
    if alpn == "h2":
        return Http2Filter(rules, host, observe, scanning)
    if alpn in HTTP_ALPN:
        return Http1Filter(rules, host, observe, scanning)
    return raw or Untouched(observe)


async def _first_bytes(
    conn: socket.socket, timeout: float, early: bytes
) -> tuple[bytes, Identification]:
    loop = asyncio.get_running_loop()
    identifier = Identifier()
    data = bytearray(early)
    if early and (found := identifier.feed(early)) is not None:
        return early, found
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), identifier.give_up()
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, READ_SIZE), remaining)
        except TimeoutError:
            return bytes(data), identifier.give_up()
        data += chunk
        found = identifier.feed(chunk) if chunk else identifier.give_up()
        if found is not None:
            return bytes(data), found


async def inspect_connection(
    conn: socket.socket,
    upstream: socket.socket,
    client: Address,
    destination: Address,
    inspector: Inspector,
    idle_timeout: float,
    early: bytes = b"",
) -> RelayStats:
    """Relay one connection, looking inside as far as the inspector needs; early: what
    the client sent that was read already (behind a SOCKS5 or HTTP CONNECT request)."""
    conn.setblocking(False)
    upstream.setblocking(False)
    try:
        first, found = await _first_bytes(conn, inspector.policy.identify_timeout, early)
    except OSError as exc:
        conn.close()
        upstream.close()
        return RelayStats(error=f"client: {exc.strerror or exc}")
    inspector.tell(client, destination, found)
    try:
        layer = inspector.layer_for(found, first, client, destination)
    except Exception as exc:  # a bug must cost this connection only
        conn.close()
        upstream.close()
        return RelayStats(error=_a_bug(client, destination, exc))
    if layer is None:
        stats = await relay_untouched(conn, upstream, first, idle_timeout)
    else:
        driver = _Driver(
            conn, upstream, client, destination, inspector, idle_timeout, found.summary()
        )
        stats = await driver.run(layer, first)
    stats.app = found.as_json()
    if layer is not None:
        stats.app["inspected"] = True
    return stats


def _a_bug(client: Address, destination: Address, exc: Exception) -> str:
    """Log a bug of inspection (with its traceback); the flow's error."""
    log.exception("%s:%d -> %s:%d: inspection failed (a bug)", *client, *destination)
    return f"inspection failed: {type(exc).__name__}: {exc}"


async def relay_untouched(
    conn: socket.socket, upstream: socket.socket, first: bytes, idle_timeout: float
) -> RelayStats:
    loop = asyncio.get_running_loop()
    try:
        if first:
            await loop.sock_sendall(upstream, first)
    except OSError as exc:
        conn.close()
        upstream.close()
        return RelayStats(error=f"upstream: {exc.strerror or exc}")
    if SPLICE_AVAILABLE:
        stats = await kernel_relay(conn, upstream, idle_timeout)
    else:
        from netwarden.proxy.relay import relay

        stats = await relay(
            await asyncio.open_connection(sock=conn),
            await asyncio.open_connection(sock=upstream),
            idle_timeout,
        )
    stats.client_to_server += len(first)
    return stats


class _Driver:
    def __init__(
        self,
        conn: socket.socket,
        upstream: socket.socket,
        client: Address,
        destination: Address,
        inspector: Inspector,
        idle_timeout: float,
        app: str = "",
    ) -> None:
        self.app = app
        self.sockets = {Side.CLIENT: conn, Side.SERVER: upstream}
        self.client, self.destination = client, destination
        self.inspector = inspector
        self.idle_timeout = idle_timeout
        self.stats = RelayStats()
        self.closed = asyncio.Event()
        self.relay_from: bytes | None = None  # set by Relay: hand over to the fast path
        self.held = bytearray()  # from the client, while nothing went to the server yet
        self.turn = asyncio.Lock()  # layer calls made in worker threads, one at a time
        self.pace: Buckets | None = None  # the rate limits of the client's program
        self.pace_deadline = time.monotonic() + PACE_LOOKUP  # its process looked up till then
        self.sent_to_server = False
        self.watched: set[Side] = set()  # sides whose socket has a reader registered
        # reads waiting for their socket: how much each may take, and for what it read
        # (or, when the read was handled at once, the commands left to carry out)
        self.waiting: dict[Side, tuple[int, asyncio.Future[bytes | list[Command]]]] = {}
        # Bytes read are handled in the event loop's callback, with no wake-up of the
        # side's coroutine, unless a layer call may wait (worker threads) or reads are
        # paced: then the coroutine handles them.
        self.at_once = inspector.workers is None and inspector.pacing is None
        # One sender at a time per socket: a send the socket did not take whole is
        # finished before anything else goes to it.
        self.sending = {Side.CLIENT: asyncio.Lock(), Side.SERVER: asyncio.Lock()}

    async def run(self, layer: Layer | TlsInterception, first: bytes) -> RelayStats:
        self.layer = layer
        self.loop = asyncio.get_running_loop()  # (asking for it costs a getpid() each time)
        for sock in self.sockets.values():  # answers go out in pieces: no Nagle delay
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.client_to_server = len(first)
        try:
            if isinstance(layer, TlsInterception):
                commands = await self._step(lambda _: layer.start(), b"")
            else:
                self.held += first
                commands = await self._step(layer.from_client, first)
            await self._carry_out(commands)
            if not self.closed.is_set() and self.relay_from is None:
                await self._pump_both()
        except OSError as exc:
            self.stats.error = f"{type(exc).__name__}: {exc.strerror or exc}"
        except Exception as exc:  # a layer's bug must cost one connection, not the proxy
            self.stats.error = _a_bug(self.client, self.destination, exc)
            self._close_all(reset=True)
            return self.stats
        if self.relay_from is not None and not self.closed.is_set():
            early = self.relay_from
            before = self.stats.client_to_server
            stats = await relay_untouched(
                self.sockets[Side.CLIENT], self.sockets[Side.SERVER], early, self.idle_timeout
            )
            stats.client_to_server += before - len(early)
            return stats
        self._close_all(reset=False)
        return self.stats

    async def _pump_both(self) -> None:
        pumps = [asyncio.ensure_future(self._pump(side)) for side in (Side.CLIENT, Side.SERVER)]
        closed = asyncio.ensure_future(self._watch_idle())
        both = asyncio.gather(*pumps)
        try:
            waited: list[asyncio.Future[Any]] = [closed, both]
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*pumps, closed):
                task.cancel()
            await asyncio.gather(*pumps, closed, both, return_exceptions=True)
            for task in pumps:
                error = None if task.cancelled() else task.exception()
                if isinstance(error, OSError):
                    self.stats.error = self.stats.error or f"{error.strerror or error}"
                elif error is not None:
                    raise error  # a bug: run() logs it and closes the connection

    async def _watch_idle(self) -> None:
        """Until closed; closes a connection idle both ways for idle_timeout."""
        while not self.closed.is_set():
            quiet = time.monotonic() - self.stats.last_activity
            if quiet >= self.idle_timeout:
                self.stats.error = f"idle for {self.idle_timeout:.0f} s"
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.closed.wait(), min(IDLE_CHECK, self.idle_timeout - quiet)
                )

    async def _pump(self, side: Side) -> None:
        try:
            await self._pump_side(side)
        finally:
            self._unwatch(side)

    async def _pump_side(self, side: Side) -> None:
        while not self.closed.is_set():
            bucket = self._bucket(side)
            most = READ_SIZE if bucket is None else await bucket.allowance(READ_SIZE)
            got = await self._received(side, most)
            if isinstance(got, list):  # read and handled at once; what is left of it
                await self._carry_out(got)
            else:
                if bucket is not None:
                    bucket.spend(len(got))
                self._took(side, got)
                await self._carry_out(await self._step(self._step_of(side), got))
                if not got:
                    return
            if self.relay_from is not None:
                return

    def _took(self, side: Side, data: bytes) -> None:
        self.stats.last_activity = time.monotonic()
        if side is Side.CLIENT:
            self.stats.client_to_server += len(data)
            if not self.sent_to_server:
                self.held += data

    def _step_of(self, side: Side) -> Callable[[bytes], list[Command]]:
        return self.layer.from_client if side is Side.CLIENT else self.layer.from_server

    async def _received(self, side: Side, most: int) -> bytes | list[Command]:
        """At most `most` bytes from the side's socket, once it has some (b"" at its
        end); or, when they were handled at once, the commands left to carry out.

        The read is done as the socket becomes readable, by the event loop's callback:
        the socket's reader stays registered between reads (asyncio's sock_recv adds
        and removes it for every read: two epoll_ctl calls and a failed recv each
        time), and is not seen as readable again in the loop's next turn (for a wake-up
        and a failed recv more) before this coroutine takes its data."""
        loop = self.loop
        if side not in self.watched:
            loop.add_reader(self.sockets[side].fileno(), self._ready, side)
            self.watched.add(side)
        waiter: asyncio.Future[bytes | list[Command]] = loop.create_future()
        self.waiting[side] = (most, waiter)
        try:
            return await waiter
        finally:
            self.waiting.pop(side, None)

    def _ready(self, side: Side) -> None:
        most, waiter = self.waiting.get(side, (0, None))
        if waiter is None or waiter.done():  # nobody reads this side just now:
            self._unwatch(side)  # watched again by the next read
            return
        try:
            data = _recv(self.sockets[side], most)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            waiter.set_exception(exc)
            return
        if not data or not self.at_once:
            waiter.set_result(data)
            return
        self._took(side, data)
        try:
            left = self._carry_out_now(self._step_of(side)(data))
        except Exception as exc:  # the side's coroutine raises it as its own
            waiter.set_exception(exc)
            return
        if left or self.closed.is_set() or self.relay_from is not None:
            waiter.set_result(left)

    def _unwatch(self, side: Side) -> None:
        """Before its socket is closed or handed over."""
        if side in self.watched:
            self.watched.discard(side)
            fd = self.sockets[side].fileno()
            if fd >= 0:
                self.loop.remove_reader(fd)

    def _bucket(self, side: Side) -> TokenBucket | None:
        """The rate limit this side's reads wait for (the client's: its uploads)."""
        pacing = self.inspector.pacing
        if pacing is None:
            return None
        if self.pace is None and time.monotonic() < self.pace_deadline:
            self.pace = pacing.buckets_for(self.client, self.destination)
        upload, download = self.pace or UNLIMITED
        return upload if side is Side.CLIENT else download

    async def _step(self, step: Callable[[bytes], list[Command]], data: bytes) -> list[Command]:
        """One call of the layer: in a worker thread (one at a time per connection)
        when a scanner in it waits on a daemon, else right here."""
        workers = self.inspector.workers
        if workers is None:
            return step(data)
        async with self.turn:
            return await self.loop.run_in_executor(workers, step, data)

    async def _carry_out(self, commands: list[Command]) -> None:
        left = self._carry_out_now(commands)
        while left:
            send = left[0]
            assert isinstance(send, Send)
            async with self.sending[send.side]:
                await self.loop.sock_sendall(self.sockets[send.side], send.data)
            self._sent(send.side, len(send.data))
            left = self._carry_out_now(left[1:])

    def _carry_out_now(self, commands: list[Command]) -> list[Command]:
        """Carry out the commands that need no waiting. Those left, from the first send
        its socket does not take whole now (with what is left of its data), are for
        _carry_out."""
        commands = _joined(commands)
        for index, command in enumerate(commands):
            if isinstance(command, Send):
                sent = self._send_now(command)
                if sent < len(command.data):
                    return [Send(command.side, command.data[sent:]), *commands[index + 1 :]]
            elif isinstance(command, EndOfData):
                with contextlib.suppress(OSError):
                    self.sockets[command.side].shutdown(socket.SHUT_WR)
            elif isinstance(command, Close):
                if command.reason:
                    log.info("%s:%d -> %s:%d: %s", *self.client, *self.destination, command.reason)
                self._close_all(command.reset)
                return []
            elif isinstance(command, Observed):
                blocked_by = self._offer(command)
                if blocked_by:
                    self._report(
                        StreamBlocked(
                            blocked_by, f"{command.method} {command.host}{command.path}".strip()
                        )
                    )
                    self._close_all(reset=True)
                    return []
            elif isinstance(command, Relay):
                if self.inspector.pacing is not None and self.pace != UNLIMITED:
                    # Rate limited (or not known yet): untouched, but still read here.
                    self.layer = Untouched()
                    held = bytes(self.held)
                    self.sent_to_server = True
                    self.held.clear()
                    if held:
                        return [Send(Side.SERVER, held), *commands[index + 1 :]]
                    continue
                self.relay_from = bytes(self.held)  # not HTTP after all: untouched from here
                return []
            else:
                self._report(command)
        return []

    def _send_now(self, command: Send) -> int:
        """What the socket takes of the send now (nothing while another send to it is
        under way)."""
        if self.sending[command.side].locked():
            return 0
        try:
            sent = self.sockets[command.side].send(command.data)
        except (BlockingIOError, InterruptedError):
            return 0
        self._sent(command.side, sent)
        return sent

    def _sent(self, side: Side, count: int) -> None:
        if side is Side.CLIENT:
            self.stats.server_to_client += count
        elif count and not self.sent_to_server:
            self.sent_to_server = True
            self.held.clear()

    def _offer(self, seen: Observed) -> str:
        """The STREAM layer's verdict: the callout that blocks, or ""."""
        if self.inspector.stream is None:
            return ""
        return self.inspector.stream(
            StreamData(
                Endpoint(*self.client),
                Endpoint(*self.destination),
                seen.side is Side.CLIENT,
                seen.data,
                self.app,
                seen.method,
                seen.host,
                seen.path,
                seen.status,
                seen.end,
            )
        )

    def _report(
        self, event: HttpExchange | TlsIntercepted | TlsFailed | StreamBlocked | Detected
    ) -> None:
        inspector = self.inspector
        if isinstance(event, Detected):
            where = f" of {event.method} {event.host}{event.path}" if event.method else ""
            matched = f" ({event.matched})" if event.matched else ""
            log.warning(
                "%s:%d -> %s:%d: %s found %s%s in the %s%s: %s",
                *self.client,
                *self.destination,
                event.scanner,
                event.signature,
                matched,
                event.direction,
                where,
                event.action,
            )
        if isinstance(event, TlsFailed) and event.side is Side.CLIENT and inspector.memory:
            inspector.memory.remember(
                inspector.clients(self.client, self.destination),
                event.server_name or self.destination[0],
                event.reason,
            )
        inspector.tell(self.client, self.destination, event)

    def _close_all(self, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for side in Side:
            self._unwatch(side)
        if reset:
            with contextlib.suppress(OSError):
                self.sockets[Side.CLIENT].setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        for side, sock in self.sockets.items():
            if side is Side.CLIENT and not reset:
                _linger(sock)
            else:
                sock.close()


LINGER = 2.0  # seconds a closed client's last bytes are read and dropped
_lingering: set[asyncio.Task[None]] = set()


def _recv(sock: socket.socket, most: int) -> bytes:
    view: memoryview | None = getattr(_read_buffers, "view", None)
    if view is None:
        view = _read_buffers.view = memoryview(bytearray(READ_SIZE))
    count = sock.recv_into(view, min(most, READ_SIZE))
    return view[:count].tobytes()


def _joined(commands: list[Command]) -> list[Command]:
    """Consecutive sends to one side as one (one system call, one TCP segment)."""
    out: list[Command] = []
    for command in commands:
        last = out[-1] if out else None
        if isinstance(command, Send) and isinstance(last, Send) and last.side is command.side:
            out[-1] = Send(command.side, last.data + command.data)
        else:
            out.append(command)
    return out


def _linger(sock: socket.socket) -> None:
    """Close after our last bytes: send a FIN, then read what the client still sends
    for a moment (closing with unread bytes would reset the connection, and the client
    could lose the answer it was about to read)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)

    async def drain() -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + LINGER
        with contextlib.suppress(OSError, TimeoutError):
            while time.monotonic() < deadline:
                remaining = deadline - time.monotonic()
                if not await asyncio.wait_for(loop.sock_recv(sock, READ_SIZE), remaining):
                    break
        sock.close()

    task = asyncio.ensure_future(drain())
    _lingering.add(task)
    task.add_done_callback(_lingering.discard)


class Refused(Exception):
    """The server a handshake named cannot be had: why, and one sentence."""

    def __init__(self, why: Refusal, message: str) -> None:
        super().__init__(message)
        self.why = why


@dataclass(frozen=True, slots=True)
class Handed:
    """A finished handshake: the server connected, where, and the client's first bytes."""

    upstream: socket.socket
    destination: Address
    early: bytes


@dataclass(frozen=True, slots=True)
class NotHanded:
    """A handshake that ended without a connection: why, and the server it named when
    that one could not be had (None: the client's request itself was at fault)."""

    reason: str
    destination: Address | None = None


Connector = Callable[[str, int], Awaitable[tuple[socket.socket, Address]]]


async def shake_hands(
    conn: socket.socket, handshake: Handshake, connect: Connector, timeout: float
) -> Handed | NotHanded:
    """Drive a listener's handshake (SOCKS5, HTTP proxy) to its end: the server it named
    connected, or why not (the client was answered, and is to be closed)."""
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = await asyncio.wait_for(
                loop.sock_recv(conn, 4096), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            return NotHanded(f"no complete {handshake.kind} request within {timeout:.0f} s")
        if not data:
            return NotHanded("the client left during the handshake")
        named: Address | None = None
        commands = handshake.from_client(data)
        while commands:
            command, commands = commands[0], commands[1:]
            if isinstance(command, Send):
                await loop.sock_sendall(conn, command.data)
            elif isinstance(command, Close):
                return NotHanded(command.reason or "closed", named)
            elif isinstance(command, OpenServer):
                named = (command.host, command.port)
                try:
                    upstream, destination = await connect(command.host, command.port)
                except Refused as exc:
                    commands = handshake.failed(exc.why, str(exc)) + commands
                    continue
                bound = upstream.getsockname()
                opened = handshake.opened((str(bound[0]), int(bound[1])))
                for step in opened:
                    if isinstance(step, Send):
                        await loop.sock_sendall(conn, step.data)
                    elif isinstance(step, Handover):
                        return Handed(upstream, destination, step.early)
                upstream.close()
                return NotHanded("the handshake ended without handing over", named)
