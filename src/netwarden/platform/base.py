"""The seam between netwarden's core and an operating system: what a backend opens
(the monitor's sources, the firewall, the packet queue) and does, as protocols.

The records and read-side interfaces that backends produce are model values
(:mod:`netwarden.model.observations`); they are named here too for the backends.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from netwarden.model.observations import (
    NO_FILE,
    NO_OWNER,
    CountedFlow,
    CountedFlowEvent,
    FlowCounterEvents,
    FlowCounterTable,
    FlowStamps,
    NativeTcpRows,
    ProcessResolver,
    ProcessStamp,
    RowFilter,
    RowHole,
    RowTemplate,
    SocketChanges,
    SocketClosedEvents,
    SocketRecord,
    SocketTable,
    Sources,
)

if TYPE_CHECKING:  # the monitor's commands do not need the policy modules loaded
    import ipaddress

    from netwarden.model import Attribution, Endpoint, ProcessInfo
    from netwarden.model.connect import ConnectRequest, FlowPacket
    from netwarden.policy.compiler import CompiledPolicy
    from netwarden.policy.connect_layer import ConnectLayer
    from netwarden.policy.environment import Environment
    from netwarden.policy.model import PortRange
    from netwarden.policy.prefixes import Network

__all__ = [
    "NO_FILE",
    "NO_OWNER",
    "Backend",
    "Capability",
    "ConnectQueue",
    "CountedFlow",
    "CountedFlowEvent",
    "Firewall",
    "FlowCounterEvents",
    "FlowCounterTable",
    "FlowStamps",
    "NativeTcpRows",
    "PacketQueue",
    "PlatformError",
    "ProcessResolver",
    "ProcessStamp",
    "QuickRedirect",
    "RowFilter",
    "RowHole",
    "RowTemplate",
    "RuleCounters",
    "SocketChanges",
    "SocketClosedEvents",
    "SocketRecord",
    "SocketTable",
    "Sources",
]


class PlatformError(RuntimeError):
    """A problem the user can fix (a missing namespace, a missing privilege), said
    in one sentence."""


@dataclass(frozen=True, slots=True)
class Capability:
    """One kernel mechanism and what netwarden can do with it."""

    name: str
    available: bool
    detail: str
    enables: str


@dataclass(frozen=True, slots=True)
class RuleCounters:
    counter: str
    comment: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class QuickRedirect:
    """One rule of the `netwarden redirect` one-liner: TCP connections to `ports` (and
    `destinations`, when given) of one address family go to `target` instead; the
    family is the target's."""

    target: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
    ports: tuple[PortRange, ...] = ()
    destinations: tuple[Network, ...] = ()
    uid: int | None = None
    forwarded: bool = False  # connections routed through this host, not its own

    @property
    def family(self) -> int:
        return self.target[0].version


class Firewall(Protocol):
    """A policy's filters and redirects in the kernel, in what netwarden owns there."""

    def environment(self) -> Environment:
        """What the policy's names (users, groups, services, scopes) refer to here."""
        ...

    def apply(self, policy: CompiledPolicy) -> int:
        """Replace the live policy atomically; the number of kernel rules."""
        ...

    def show(self, table: str) -> tuple[list[RuleCounters], bool]:
        """Per-rule counters of the live policy; False when none is applied."""
        ...

    def add_connect_target(self, table: str, layer: ConnectLayer, target: Endpoint) -> None:
        """Make REDIRECT verdicts to `target` (one of layer's redirects) work in the live
        policy's table, without replacing it."""
        ...

    def marked_owners(self) -> dict[str, int]:
        """Where this policy marks sockets for scope and service rules: owner -> mark."""
        ...

    def remark(self, policy: CompiledPolicy) -> list[str]:
        """Mark again the sockets of scopes and services whose cgroup was made anew
        since the policy was applied (a restarted unit); which ones."""
        ...

    def remove(self, table: str) -> bool:
        """Remove netwarden's policy (nothing else); True when there was one."""
        ...

    def apply_quick_redirects(self, redirects: list[QuickRedirect]) -> None: ...

    def remove_quick_redirects(self) -> bool: ...


class ConnectQueue(Protocol):
    """New connections held at their first packet until decided (the CONNECT layer)."""

    mechanism: str  # how the kernel queues them, in words for `doctor` and logs

    def fileno(self) -> int: ...

    def receive(self) -> list[ConnectRequest]:
        """The connections waiting now (none: an empty list)."""
        ...

    def decide(self, request: ConnectRequest, code: int | None) -> None:
        """Release one with the verdict code of the compiled CONNECT layer (None: drop)."""
        ...

    def owner(self, request: ConnectRequest) -> tuple[ProcessInfo | None, Attribution]:
        """The process that holds the connection's socket, read while it waits."""
        ...

    def parent_of(self, pid: int) -> ProcessInfo | None: ...

    def close(self) -> None: ...


class PacketQueue(Protocol):
    """Every packet of the connections callouts watch (the PACKET layer)."""

    def fileno(self) -> int: ...

    def receive(self) -> list[FlowPacket]: ...

    def decide(self, packet: FlowPacket, accept: bool) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ShapeClass:
    """A rate limit as the kernel applies it: bytes per second each way (None: none)."""

    name: str
    upload: int | None
    download: int | None


class Shaper(Protocol):
    """Rate limits in the kernel for connections named by their local port."""

    def start(self, classes: Sequence[ShapeClass], interfaces: Sequence[str]) -> None:
        """Set up the limits on these interfaces (a previous daemon's removed first)."""
        ...

    def assign(self, transport: str, version: int, local_port: int, index: int) -> None:
        """Limit this connection by class `index`, before its first packet goes on."""
        ...

    def release(self, transport: str, version: int, local_port: int) -> None: ...

    def close(self) -> None:
        """Remove everything start() and assign() set up."""
        ...


class Backend(Protocol):
    def open_sources(
        self, netns: str | None, *, events: bool
    ) -> AbstractContextManager[Sources]: ...

    def capabilities(self) -> list[Capability]: ...

    def firewall(self) -> Firewall: ...

    def run_scoped(self, scope: str, argv: Sequence[str]) -> int:
        """Run argv in the application scope `scope`; its exit status."""
        ...

    def process_alive(self, pid: int) -> bool: ...

    def monitor_table(self, pid: int) -> str:
        """What a monitor of process `pid` may leave behind if it crashes ("" if nothing)."""
        ...

    def original_destination(self, sock: socket.socket) -> tuple[str, int]:
        """Where an accepted, redirected TCP connection was originally going."""
        ...

    def clean_dead_monitors(self) -> list[str]:
        """Remove what monitors that died left (their tables, a setting to restore);
        the names of what was removed."""
        ...

    def connect_queue(self, layer: ConnectLayer) -> ConnectQueue:
        """Start queueing the first packets of new connections (close() stops)."""
        ...

    def packet_queue(self, layer: ConnectLayer) -> PacketQueue:
        """Start taking the packets of watched connections (the rules are the CONNECT
        queue's; close() stops)."""
        ...

    def clear_connect_queue(self) -> bool:
        """Remove what queues first packets, also a crashed daemon's; True if any was."""
        ...

    def shaper(self) -> Shaper: ...

    def shaped_interfaces(self) -> list[str]:
        """The interfaces rate limits apply on (all but loopback)."""
        ...

    def clear_shaping(self) -> bool:
        """Remove netwarden's rate limits, also a crashed daemon's; True if any were."""
        ...
