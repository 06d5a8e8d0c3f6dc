"""The splice fast path for connections that asyncio handled first (a SOCKS5 or HTTP
CONNECT handshake, an upstream chain): the sockets leave the event loop and their
bytes move in the kernel, in a thread of their own. Linux only; elsewhere callers keep
the asyncio relay."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import cast

from netwarden.proxy.relay import RelayStats

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

AVAILABLE = sys.platform == "linux"


async def kernel_relay(client: socket.socket, server: socket.socket,
                       idle_timeout: float) -> RelayStats:  # fmt: skip
    """Relay two connected sockets with splice(2) until both directions end."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[RelayStats] = loop.create_future()

    def done(stats: RelayStats) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
            loop.call_soon_threadsafe(finished.set_result, stats)

    if sys.platform == "linux":
        from netwarden.proxy.splice import start_relay

        start_relay(client, server, idle_timeout, done)
    else:
        raise RuntimeError("the splice fast path is Linux only")
    return await finished


async def detach(streams: Streams) -> tuple[socket.socket, bytes]:
    """Take a connection away from its asyncio streams: everything written so far is
    sent; what was read ahead and not consumed is returned with a socket of its own."""
    reader, writer = streams
    await writer.drain()
    transport = cast(asyncio.Transport, writer.transport)
    transport.pause_reading()
    read_ahead = bytes(getattr(reader, "_buffer", b""))  # asyncio keeps it there
    original = transport.get_extra_info("socket")
    sock = socket.socket(fileno=socket.dup(original.fileno()))
    transport.abort()  # closes the original descriptor; the duplicate stays
    return sock, read_ahead


async def relay_streams(client: Streams, server: Streams, idle_timeout: float) -> RelayStats:
    """Hand two stream pairs to the kernel fast path, bytes read ahead included."""
    client_sock, from_client = await detach(client)
    server_sock, from_server = await detach(server)
    loop = asyncio.get_running_loop()
    for sock, early in ((server_sock, from_client), (client_sock, from_server)):
        if early:
            sock.setblocking(False)
            await loop.sock_sendall(sock, early)
    stats = await kernel_relay(client_sock, server_sock, idle_timeout)
    stats.client_to_server += len(from_client)
    stats.server_to_client += len(from_server)
    return stats
