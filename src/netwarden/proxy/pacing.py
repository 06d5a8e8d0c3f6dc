"""Rate limits for connections through netwarden's proxy (the kernel's shaper does not
see them as the program's: the proxy's upstream connections are netwarden's own). A
token bucket per limit and direction, shared by all the connections of the program it
limits; a connection's reads wait for tokens, which slows its sender down through TCP's
own flow control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from netwarden.model import ProcessInfo
from netwarden.policy.limits_model import Shape

Address = tuple[str, int]
SMALLEST_READ = 16 * 1024  # bytes worth waiting for before reading (fewer, larger reads)


class TokenBucket:
    def __init__(self, rate: int, burst: int | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate // 10, 64 * 1024))
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        moment = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (moment - self.stamp) * self.rate)
        self.stamp = moment

    async def allowance(self, most: int) -> int:
        """Wait until a read may take some bytes; how many (at most `most`)."""
        wanted = min(most, SMALLEST_READ, int(self.burst))
        while True:
            self._refill()
            if self.tokens >= wanted:
                return int(min(most, self.tokens))
            await asyncio.sleep((wanted - self.tokens) / self.rate)

    def spend(self, count: int) -> None:
        self.tokens -= count


Buckets = tuple[TokenBucket | None, TokenBucket | None]  # (upload, download)
UNLIMITED: Buckets = (None, None)


class Pacing:
    """The policy's [[shape]] limits for proxied connections."""

    def __init__(
        self,
        shapes: Sequence[Shape],
        process_of: Callable[[Address, Address], ProcessInfo | None],
        shape_of: Callable[[Address, Address], int | None] | None = None,
    ) -> None:
        """shape_of: the limit (index, or -1: none) the CONNECT layer found for a
        connection as it started (None: not seen there); process_of: its process as the
        engine's flow events named it, asked otherwise."""
        self.shapes = tuple(shapes)
        self.process_of = process_of
        self.shape_of = shape_of
        self.buckets: list[Buckets] = [
            (
                TokenBucket(shape.upload) if shape.upload else None,
                TokenBucket(shape.download) if shape.download else None,
            )
            for shape in self.shapes
        ]

    def buckets_for(self, client: Address, destination: Address) -> Buckets | None:
        """The buckets of the limit this connection's program falls under (UNLIMITED:
        none does); None while its process is not known yet."""
        index = self.shape_of(client, destination) if self.shape_of is not None else None
        if index is not None:
            return self.buckets[index] if index >= 0 else UNLIMITED
        process = self.process_of(client, destination)
        if process is None:
            return None
        for shape, buckets in zip(self.shapes, self.buckets, strict=True):
            if shape.who.matches(
                process.exe, process.name, process.uid, process.cgroup, destination[0]
            ):
                return buckets
        return UNLIMITED
