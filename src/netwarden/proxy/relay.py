"""Relay bytes both ways between two stream connections.

Half-close is carried across (a client that shuts down its sending side still gets
the whole answer), each direction has a bounded buffer (the writer's high-water mark
pauses reading), and a connection idle in both directions for too long is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

CHUNK = 64 * 1024
HIGH_WATER = 256 * 1024


@dataclass
class RelayStats:
    client_to_server: int = 0
    server_to_client: int = 0
    error: str = ""
    last_activity: float = field(default_factory=time.monotonic)
    app: dict[str, object] = field(default_factory=dict)  # what inspection identified


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stats: RelayStats,
    upstream: bool,
) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
            return
        writer.write(data)
        stats.last_activity = time.monotonic()
        if upstream:
            stats.client_to_server += len(data)
        else:
            stats.server_to_client += len(data)
        await writer.drain()  # waits while the peer's buffer is above the high-water mark


async def relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    idle_timeout: float = 300.0,
) -> RelayStats:
    """Relay until both directions are finished, one fails, or both idle too long."""
    stats = RelayStats()
    for _reader, writer in (client, server):
        writer.transport.set_write_buffer_limits(high=HIGH_WATER)
    pumps = [
        asyncio.ensure_future(_pump(client[0], server[1], stats, upstream=True)),
        asyncio.ensure_future(_pump(server[0], client[1], stats, upstream=False)),
    ]
    try:
        pending = set(pumps)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=min(idle_timeout, 5.0), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task.exception() is not None:
                    stats.error = f"{type(task.exception()).__name__}: {task.exception()}"
                    return stats
            if not done and time.monotonic() - stats.last_activity >= idle_timeout:
                stats.error = f"idle for {idle_timeout:.0f} s"
                return stats
        return stats
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for _reader, writer in (client, server):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
