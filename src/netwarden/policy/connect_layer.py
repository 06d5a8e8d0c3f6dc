"""The CONNECT layer as the kernel sees it: which queue holds first packets, and
which codes carry the verdicts back.

A verdict returns as a code in the packet's mark (within `mask`); netwarden's table
moves it into the connection's conntrack mark and clears it from the packet, so
later packets of the connection are never queued and the code decides what the
kernel does (reject, accept, redirect to a listener).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from netwarden.model.connect import Action, Verdict
from netwarden.model.flow import Endpoint

DEFAULT_QUEUE = 20055
# Bits no mark of netwarden's own (proxy 0x4E50xxxx, scopes 0x4E57xxxx, TPROXY
# 0x4E5001xx) uses.
DEFAULT_MASK = 0xB0000000
# A connection whose packets a callout watches (the PACKET layer) carries this bit in
# its conntrack mark: its later packets go to the queue after the CONNECT layer's.
WATCH_BIT = 0x01000000


@functools.cache
def codes_of(mask: int) -> tuple[int, ...]:
    """Every non-zero value within mask, smallest first (asked once a connection)."""
    bits = [1 << i for i in range(32) if mask >> i & 1]
    return tuple(
        sorted(
            sum(bit for i, bit in enumerate(bits) if n >> i & 1) for n in range(1, 1 << len(bits))
        )
    )


@dataclass(frozen=True, slots=True)
class ConnectLayer:
    queue: int = DEFAULT_QUEUE
    mask: int = DEFAULT_MASK
    fail_open: bool = True
    redirects: tuple[Endpoint, ...] = ()  # listeners REDIRECT verdicts may name
    proxy_mark: int = 0x4E500001  # connections of netwarden's proxy are not queued
    packets: bool = False  # some callout watches packets: the PACKET layer's queue too

    @property
    def packet_queue(self) -> int:
        return (self.queue + 1) % 65536

    @property
    def continue_code(self) -> int:
        """Decided, without an opinion: the policy's other rules decide."""
        return codes_of(self.mask)[0]

    @property
    def permit_code(self) -> int:
        return codes_of(self.mask)[1]

    @property
    def block_code(self) -> int:
        return codes_of(self.mask)[2]

    @property
    def redirect_codes(self) -> dict[Endpoint, int]:
        return dict(zip(self.redirects, codes_of(self.mask)[3:], strict=False))

    @property
    def capacity(self) -> int:
        """How many redirect targets the mask can name."""
        return max(0, len(codes_of(self.mask)) - 3)

    def code(self, verdict: Verdict) -> int | None:
        """The mark code of a verdict; None for a redirect to an unknown target (the
        layer must be applied again with it first)."""
        if verdict.action is Action.BLOCK:
            return self.block_code
        if verdict.action is Action.PERMIT:
            return self.permit_code
        if verdict.action is Action.REDIRECT:
            return self.redirect_codes.get(verdict.target) if verdict.target else None
        return self.continue_code

    def with_redirect(self, target: Endpoint) -> ConnectLayer:
        if target in self.redirects:
            return self
        if len(self.redirects) >= self.capacity:
            raise ValueError(
                f"no room for another redirect target ({self.capacity} fit in the "
                f"mark mask {self.mask:#x})"
            )
        return ConnectLayer(
            self.queue,
            self.mask,
            self.fail_open,
            (*self.redirects, target),
            self.proxy_mark,
            self.packets,
        )
