"""What the kernel says about sockets, flows and processes, as plain records, and the
read-side interfaces that yield them. A platform backend implements these; the monitor
consumes them. No I/O, no platform imports.

Records carry what the kernel said, unmerged; :mod:`netwarden.monitor` turns them
into flows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from netwarden.model.flow import Endpoint, FlowKey, ProcessInfo, Transport


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
    pid: int = 0  # the process a kernel event saw use it (raw and packet sockets)
    counted_since: float | None = None  # open before its bytes were counted: since then
    key: FlowKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per record: unchanged sockets keep their record across dumps.
        self.key = FlowKey(self.transport, self.local, self.remote)


class CountedFlowEvent(enum.Enum):
    SNAPSHOT = "snapshot"
    NEW = "new"
    UPDATE = "update"
    DESTROY = "destroy"


@dataclass(frozen=True, slots=True)
class CountedFlow:
    """A flow as the kernel's connection tracking counts it: the original direction is
    the one the initiator sent."""

    event: CountedFlowEvent
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


class SocketClosedEvents(EventSource, Protocol):
    def drain(self) -> list[SocketRecord]: ...


class FlowCounterTable(Protocol):
    def snapshot(self) -> list[CountedFlow]: ...

    def close(self) -> None: ...


class FlowCounterEvents(EventSource, Protocol):
    def drain(self) -> list[CountedFlow]: ...


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


class AddressSource(Protocol):
    def current(self) -> frozenset[str]:
        """This host's own addresses (in the watched namespace), in normalised text."""
        ...

    def close(self) -> None: ...


class Sources(Protocol):
    """Everything the monitor reads, opened for one network namespace."""

    sockets: SocketTable
    processes: ProcessResolver
    closed_sockets: SocketClosedEvents | None
    flow_counters: FlowCounterTable | None
    flow_counter_events: FlowCounterEvents | None
    flow_stamps: FlowStamps | None
    addresses: AddressSource | None  # None where the platform cannot tell
    missing: tuple[str, ...]  # what is unavailable, in words for the user
    netns: str

    def close(self) -> None: ...
