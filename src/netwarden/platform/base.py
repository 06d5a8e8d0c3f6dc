"""What the core needs from an operating system, as protocols and plain records.

Records carry what the kernel said, unmerged; :mod:`netwarden.monitor` turns them
into flows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from netwarden.model import Endpoint, FlowKey, ProcessInfo, Transport

if TYPE_CHECKING:  # the monitor's commands do not need the policy modules loaded
    import ipaddress

    from netwarden.policy.environment import Environment
    from netwarden.policy.model import Policy, PortRange
    from netwarden.policy.prefixes import Network


class PlatformError(RuntimeError):
    """A problem the user can fix (a missing namespace, a missing privilege), said
    in one sentence."""


# Not frozen, though never changed once made: a frozen dataclass takes ~6x as long to
# build, and the monitor builds several per flow.
@dataclass(slots=True)
class SocketRecord:
    """One socket from the socket table (or its last state when it was destroyed)."""

    transport: Transport
    local: Endpoint
    remote: Endpoint
    state: str
    inode: int
    uid: int
    cookie: int
    cgroup_id: int = 0
    bytes_sent: int = 0  # payload bytes the peer acknowledged (TCP only)
    bytes_received: int = 0  # payload bytes received (TCP only)
    destroyed: bool = False
    key: FlowKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per record: unchanged sockets keep their record across dumps.
        self.key = FlowKey(self.transport, self.local, self.remote)


class ConntrackEventType(enum.Enum):
    SNAPSHOT = "snapshot"
    NEW = "new"
    UPDATE = "update"
    DESTROY = "destroy"


@dataclass(frozen=True, slots=True)
class ConntrackRecord:
    """A conntrack entry: the original direction is the one the initiator sent."""

    event: ConntrackEventType
    transport: Transport
    orig_src: Endpoint
    orig_dst: Endpoint
    reply_src: Endpoint
    reply_dst: Endpoint
    orig_packets: int
    orig_bytes: int  # IP bytes, headers included
    reply_packets: int
    reply_bytes: int
    ct_id: int = 0

    @property
    def header_bytes(self) -> int:
        """IP + transport header size of one packet of this flow (no options)."""
        ip = 40 if self.orig_src.version == 6 else 20
        return ip + (8 if self.transport is Transport.UDP else 20)

    @property
    def orig_payload(self) -> int:
        return max(0, self.orig_bytes - self.orig_packets * self.header_bytes)

    @property
    def reply_payload(self) -> int:
        return max(0, self.reply_bytes - self.reply_packets * self.header_bytes)


# Not frozen, though never changed once made: a frozen dataclass takes ~6x as long to
# build, and the monitor builds several per flow.
@dataclass(slots=True)
class ProcessStamp:
    """A kernel event that named the process of a flow as it was established."""

    transport: Transport
    local: Endpoint
    remote: Endpoint
    process: ProcessInfo
    timestamp: float
    closed: bool = False  # the flow-deleted event


class RowHole(enum.IntEnum):
    """What a native renderer writes into each hole of a flow's JSON template."""

    LOCAL_ADDRESS = 0  # a JSON string
    LOCAL_PORT = 1
    REMOTE_ADDRESS = 2  # a JSON string
    REMOTE_PORT = 3
    STATE = 4  # a JSON string
    BYTES_SENT = 5
    BYTES_RECEIVED = 6
    UID = 7


# Owner groups of NativeTcpRows.groups() that are not a pid.
NO_OWNER = -1  # the socket has a file, but no process was found holding it
NO_FILE = -2  # the socket has no file (closed, or owned by the kernel)

# (text between the holes, what goes in each hole): one more piece than holes.
RowTemplate = tuple[tuple[bytes, ...], tuple[RowHole, ...]]


@dataclass(frozen=True, slots=True)
class RowFilter:
    """The rows a native listing keeps: all of what is given must hold."""

    port: int | None = None  # at either end
    state: str | None = None  # upper-case state name, e.g. ESTABLISHED
    address: str | None = None  # text in either address


class NativeTcpRows(Protocol):
    """Every TCP socket of one dump, held natively: a listing of thousands of sockets
    is rendered without a Python object per socket. One row per flow key, sorted by
    local address, local port, remote address, remote port; sockets sharing a key are
    merged as the flow table merges them."""

    def groups(self, owners: dict[int, int]) -> set[tuple[int, int]]:
        """(owner group, cgroup id) of every row: the pid owners maps the socket's
        inode to, else NO_OWNER or NO_FILE. Needed before write()."""
        ...

    def write(
        self,
        fd: int,
        templates: dict[tuple[int, int], RowTemplate | None],
        wanted: RowFilter | None = None,
    ) -> int:
        """Each row as JSON from the template of its group, joined by commas, to fd;
        rows of groups without a template and rows `wanted` rejects are left out.
        The number of bytes written."""
        ...


@dataclass(frozen=True, slots=True)
class SocketChanges:
    """The socket table since the last look (SocketTable.changes)."""

    changed: list[SocketRecord]  # TCP sockets that are new, or whose state or counters moved
    vanished: list[FlowKey]  # TCP flows whose sockets are gone
    others: list[SocketRecord]  # every other (UDP) socket, in full


class SocketTable(Protocol):
    def snapshot(self) -> list[SocketRecord]: ...

    def changes(self, *, restart: bool = False) -> SocketChanges | None:
        """What changed since the last call (the first, or with restart: every
        socket), read without a Python object per unchanged socket; None where the
        platform cannot (then snapshot() is the way)."""
        ...

    def split_snapshot(self) -> tuple[NativeTcpRows, list[SocketRecord]] | None:
        """TCP sockets held natively and the other sockets as records; None where the
        platform has no native dump (then snapshot() is the way)."""
        ...

    def close(self) -> None: ...


class EventSource(Protocol):
    """A kernel event stream with a file descriptor to wait on."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class SocketCloseEvents(EventSource, Protocol):
    def drain(self) -> list[SocketRecord]: ...


class ConntrackTable(Protocol):
    def snapshot(self) -> list[ConntrackRecord]: ...

    def close(self) -> None: ...


class ConntrackEvents(EventSource, Protocol):
    def drain(self) -> list[ConntrackRecord]: ...


class FlowStamps(EventSource, Protocol):
    def drain(self) -> list[ProcessStamp]: ...


class ProcessResolver(Protocol):
    denied: int  # processes whose open files could not be read in the last scan

    def owner_of(self, inode: int) -> int | None: ...

    def owners_of(self, inodes: set[int]) -> dict[int, int]: ...

    def all_owners(self) -> dict[int, int]:
        """Every socket inode with its process, read afresh."""
        ...

    def info(self, pid: int) -> ProcessInfo | None: ...

    def cgroup_path(self, cgroup_id: int) -> str: ...


@dataclass(frozen=True, slots=True)
class Capability:
    """One kernel mechanism and what netwarden can do with it."""

    name: str
    available: bool
    detail: str
    enables: str


class Sources(Protocol):
    """Everything the monitor reads, opened for one network namespace."""

    sockets: SocketTable
    processes: ProcessResolver
    socket_closes: SocketCloseEvents | None
    conntrack: ConntrackTable | None
    conntrack_events: ConntrackEvents | None
    flow_stamps: FlowStamps | None
    missing: tuple[str, ...]  # what is unavailable, in words for the user
    netns: str

    def close(self) -> None: ...


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

    def apply(self, policy: Policy) -> int:
        """Replace the live policy atomically; the number of kernel rules."""
        ...

    def show(self, table: str) -> tuple[list[RuleCounters], bool]:
        """Per-rule counters of the live policy; False when none is applied."""
        ...

    def marked_owners(self) -> dict[str, int]:
        """Where this policy marks sockets for scope and service rules: owner -> mark."""
        ...

    def remark(self, policy: Policy) -> list[str]:
        """Mark again the sockets of scopes and services whose cgroup was made anew
        since the policy was applied (a restarted unit); which ones."""
        ...

    def remove(self, table: str) -> bool:
        """Remove netwarden's policy (nothing else); True when there was one."""
        ...

    def apply_quick_redirects(self, redirects: list[QuickRedirect]) -> None: ...

    def remove_quick_redirects(self) -> bool: ...


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
