"""The splice fast path for connections that asyncio handled first (a SOCKS5 or HTTP
CONNECT handshake, an upstream chain, first bytes read for identification): the
sockets leave the event loop and their bytes move in the kernel, in a thread of their
own. Linux only; elsewhere callers keep the asyncio relay."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

from netwarden.proxy.relay import RelayStats

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
