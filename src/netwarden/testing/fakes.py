"""In-memory stand-ins for the platform protocols, for unit tests of the core."""

from __future__ import annotations

from dataclasses import dataclass, field

from netwarden.model import (
    Attribution,
    AttributionMethod,
    Endpoint,
    Flow,
    FlowEvent,
    FlowEventKind,
    FlowKey,
    ProcessInfo,
    Transport,
)
from netwarden.model.observations import AddressSource
from netwarden.platform.base import (
    CountedFlow,
    CountedFlowEvent,
    FlowCounterEvents,
    FlowCounterTable,
    FlowStamps,
    NativeTcpRows,
    ProcessResolver,
    SocketChanges,
    SocketClosedEvents,
    SocketRecord,
    SocketTable,
)


@dataclass
class FakeResolver:
    """Socket owners and processes as the test declares them."""

    owners: dict[int, int] = field(default_factory=dict)
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    cgroups: dict[int, str] = field(default_factory=dict)
    denied: int = 0
    asked: list[set[int]] = field(default_factory=list)  # inodes each lookup named

    def owner_of(self, inode: int) -> int | None:
        return self.owners_of({inode}).get(inode)

    def owners_of(self, inodes: set[int]) -> dict[int, int]:
        if inodes:
            self.asked.append(set(inodes))
        return {i: self.owners[i] for i in inodes if i in self.owners}

    def all_owners(self) -> dict[int, int]:
        return dict(self.owners)

    def info(self, pid: int) -> ProcessInfo | None:
        return self.processes.get(pid)

    def cgroup_path(self, cgroup_id: int) -> str:
        return self.cgroups.get(cgroup_id, "")


def tcp_socket(
    local: str, remote: str, *, inode: int = 0, state: str = "ESTABLISHED",
    sent: int = 0, received: int = 0, destroyed: bool = False, uid: int = 0,
    cookie: int | None = None,
) -> SocketRecord:  # fmt: skip
    """A TCP socket record from "addr:port" strings ("[v6]:port" for IPv6); its cookie
    is its inode unless given."""
    return SocketRecord(
        Transport.TCP, endpoint(local), endpoint(remote), state, inode, uid,
        inode if cookie is None else cookie,
        bytes_sent=sent, bytes_received=received, destroyed=destroyed,
    )  # fmt: skip


def udp_socket(local: str, remote: str = "0.0.0.0:0", *, inode: int = 0) -> SocketRecord:
    state = "UNCONN" if remote.endswith(":0") else "ESTABLISHED"
    return SocketRecord(Transport.UDP, endpoint(local), endpoint(remote), state, inode, 0, inode)


def udp_conntrack(
    client: str,
    server: str,
    up: int,
    down: int,
    event: CountedFlowEvent = CountedFlowEvent.SNAPSHOT,
) -> CountedFlow:
    """A UDP conversation with `up` payload bytes from client and `down` back, 1 packet each way."""
    c, s = endpoint(client), endpoint(server)
    header = 28 if c.version == 4 else 48
    return CountedFlow(event, Transport.UDP, c, s, s, c, 1, up + header, 1, down + header)


def endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


def flow_event(
    kind: FlowEventKind,
    process: ProcessInfo,
    sent: int,
    received: int,
    local: str = "10.0.0.1:40000",
    remote: str = "192.0.2.7:443",
    first_seen: float = 0.0,
) -> FlowEvent:
    """An engine event about a TCP flow of this process, with these totals."""
    flow = Flow(
        key=FlowKey(Transport.TCP, endpoint(local), endpoint(remote)),
        state="ESTABLISHED",
        process=process,
        attribution=Attribution(AttributionMethod.FLOW_EVENT),
        bytes_sent=sent,
        bytes_received=received,
        first_seen=first_seen,
        uid=process.uid,
    )
    return FlowEvent(kind, flow)


@dataclass
class FakeSocketTable:
    """A socket table whose contents the test sets between snapshots."""

    records: list[SocketRecord] = field(default_factory=list)

    def snapshot(self) -> list[SocketRecord]:
        return list(self.records)

    def split_snapshot(self) -> tuple[NativeTcpRows, list[SocketRecord]] | None:
        return None

    def changes(self, *, restart: bool = False) -> SocketChanges | None:
        return None

    def close(self) -> None:
        pass


@dataclass
class FakeSources:
    """Monitor sources with no kernel behind them: sockets and processes as declared."""

    sockets: SocketTable = field(default_factory=FakeSocketTable)
    processes: ProcessResolver = field(default_factory=FakeResolver)
    closed_sockets: SocketClosedEvents | None = None
    flow_counters: FlowCounterTable | None = None
    flow_counter_events: FlowCounterEvents | None = None
    flow_stamps: FlowStamps | None = None
    addresses: AddressSource | None = None
    missing: tuple[str, ...] = ()
    netns: str = ""

    def close(self) -> None:
        pass


@dataclass
class FakeAddresses:
    """This host's addresses, as declared."""

    known: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        return self.known

    def close(self) -> None:
        pass
