"""Flows as the monitor shows them: who talks to whom, how much, and which process."""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from netwarden.memo import IdentityMemo

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\s\[\]]+))(?::(?P<port>\d+))?$"
)


def host_port(address: tuple[object, ...] | tuple[str, int]) -> str:
    """An (address, port) pair as netwarden writes endpoints: 10.0.0.5:443,
    [fd00::1]:443."""
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network as a user writes it: 10.0.0.5, 10.0.0.0/24, fd00::1,
    [fd00::1] (as netwarden prints IPv6), fd00::/64. ValueError when it is neither."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_network(bare, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network") from None


def within(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether an address (text) lies in the network; False for what is no address."""
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def parse_host_port(text: str) -> tuple[IPAddress, int | None]:
    """'10.0.0.5:443', '[fd00::1]:443', or an address without a port."""
    match = _HOST_PORT.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    try:
        address = ipaddress.ip_address(match.group("v6") or match.group("host"))
    except ValueError:
        raise ValueError(f"{text!r} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)") from None
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be from 1 to 65535")
    return address, None if port is None else int(port)


class Transport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    # Sockets without ports (see platform/linux/other_sockets.py): the local port holds
    # the IP protocol (a ping socket's echo id, a packet socket's EtherType), the remote
    # port the socket's inode, which tells apart sockets of one protocol.
    ICMP = "icmp"  # raw ICMP and ping sockets, IPv4
    ICMP6 = "icmp6"
    RAW = "raw"  # raw sockets of any other IP protocol
    PACKET = "packet"  # AF_PACKET: frames on an interface (the local address)

    @property
    def number(self) -> int:
        return {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58}.get(self.value, 255)

    @property
    def has_ports(self) -> bool:
        return self is Transport.TCP or self is Transport.UDP

    @classmethod
    def from_number(cls, number: int) -> Transport:
        if number == 6:
            return cls.TCP
        if number == 17:
            return cls.UDP
        raise ValueError(f"IP protocol {number} is neither TCP nor UDP")


class Endpoint(NamedTuple):
    """An IP address (normalised text form) and a port; port 0 means unset.

    Endpoint and FlowKey are named tuples rather than dataclasses: they key every
    dictionary of the flow table, and tuples hash in C.
    """

    address: str
    port: int

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


class FlowKey(NamedTuple):
    """One conversation seen from this host: transport, our end, their end."""

    transport: Transport
    local: Endpoint
    remote: Endpoint

    def __str__(self) -> str:
        return f"{self.transport} {self.local} -> {self.remote}"


class AttributionMethod(enum.StrEnum):
    """How a flow's process was found; the monitor shows it so it can be trusted."""

    FLOW_EVENT = "flow-event"  # kernel event at connect/accept time named the process
    SOCKET_OWNER = "socket-owner"  # the socket's inode found among a process's open files
    LOCAL_PORT = "local-port"  # a socket of that process is bound to the flow's local port
    RELAY = "relay"  # netwarden's own proxy said the socket is its own
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    name: str = ""
    exe: str = ""
    cmdline: tuple[str, ...] = ()
    uid: int | None = None
    user: str = ""
    cgroup: str = ""
    unit: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "exe": self.exe,
            "cmdline": list(self.cmdline),
            "uid": self.uid,
            "user": self.user,
            "cgroup": self.cgroup,
            "unit": self.unit,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(data["pid"]),
            name=str(data.get("name", "")),
            exe=str(data.get("exe", "")),
            cmdline=tuple(str(part) for part in data.get("cmdline", ())),
            uid=None if data.get("uid") is None else int(data["uid"]),
            user=str(data.get("user", "")),
            cgroup=str(data.get("cgroup", "")),
            unit=str(data.get("unit", "")),
        )


COUNTED_SINCE = "under way when the monitor started: bytes counted from then"
NOT_MEASURED = (
    "not measured: no connection tracking counted this UDP conversation (netwarden "
    "monitor tracks connections while it runs; --once changes nothing on the host)"
)

# A process with many flows is written out once, not once per event. The documents are
# shared: read them, never change them.
process_json: IdentityMemo[ProcessInfo, dict[str, Any]] = IdentityMemo(ProcessInfo.to_json)


@dataclass(frozen=True, slots=True)
class Attribution:
    method: AttributionMethod
    reason: str = ""  # why the process is unknown, or a caveat

    @classmethod
    def unknown(cls, reason: str) -> Attribution:
        return cls(AttributionMethod.UNKNOWN, reason)


# Not frozen, though never changed once made: a frozen dataclass takes ~6x as long to
# build, and the monitor builds several per flow.
@dataclass(slots=True)
class Flow:
    """A snapshot of one flow. Byte counts are application payload bytes."""

    key: FlowKey
    state: str
    process: ProcessInfo | None
    attribution: Attribution
    bytes_sent: int = 0
    bytes_received: int = 0
    send_rate: float = 0.0  # bytes per second over the last refresh interval
    receive_rate: float = 0.0
    first_seen: float = 0.0  # unix time
    last_seen: float = 0.0
    closed: bool = False
    uid: int | None = None
    cgroup: str = ""
    netns: str = ""
    relay: str = ""  # how a local proxy relays it, see RelayLink
    app: str = ""  # the application protocol netwarden's proxy identified, see AppNote
    # False for a UDP conversation no connection tracking counted (nothing tracks
    # connections here, or none was seen yet): its byte counts say nothing.
    bytes_measured: bool = True
    # A UDP conversation that was under way when the monitor started: its bytes are
    # counted from then (unix time), not from its start.
    counted_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        if not self.bytes_measured:
            return {
                **self._json(),
                "bytes_sent": None,
                "bytes_received": None,
                "bytes_note": NOT_MEASURED,
            }
        if self.counted_since is not None:
            return {
                **self._json(),
                "bytes_counted_since": self.counted_since,
                "bytes_note": COUNTED_SINCE,
            }
        return self._json()

    def _json(self) -> dict[str, Any]:
        return {
            "transport": str(self.key.transport),
            "local_address": self.key.local.address,
            "local_port": self.key.local.port,
            "remote_address": self.key.remote.address,
            "remote_port": self.key.remote.port,
            "state": self.state,
            "process": None if self.process is None else process_json(self.process),
            "attribution": str(self.attribution.method),
            "attribution_reason": self.attribution.reason,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "send_rate": round(self.send_rate, 1) if self.send_rate else 0.0,
            "receive_rate": round(self.receive_rate, 1) if self.receive_rate else 0.0,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "closed": self.closed,
            "uid": self.uid,
            "cgroup": self.cgroup,
            "netns": self.netns,
            "relay": self.relay,
            "app": self.app,
        }


@dataclass(frozen=True, slots=True)
class RelayLink:
    """One connection a local proxy relays, as up to three sockets of this host: the
    application's (when it runs here), the proxy's accepted one and its upstream one.
    Each flow is told what it is, so that one connection is not read as three."""

    client: Endpoint  # the application's end, as the proxy sees it
    listener: Endpoint  # the proxy's end of the accepted connection
    upstream: Endpoint  # the proxy's end of its own connection
    upstream_remote: Endpoint  # where that goes: the destination or an upstream proxy
    destination: Endpoint  # where the application was going
    proxy_pid: int  # the process of the proxy's two sockets

    def notes(self) -> list[tuple[FlowKey, str, int | None]]:
        """(flow, what it is, its process when the link knows it)."""
        tcp = Transport.TCP
        connection = f"{self.client} -> {self.destination}"
        return [
            (FlowKey(tcp, self.client, self.destination),
             f"{PROXIED}: the proxy's upstream is {self.upstream} -> {self.upstream_remote}",
             None),
            (FlowKey(tcp, self.listener, self.client), f"{PROXY_ACCEPTED} of {connection}",
             self.proxy_pid),
            (FlowKey(tcp, self.upstream, self.upstream_remote),
             f"{PROXY_UPSTREAM} of {connection}", self.proxy_pid),
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class AppNote:
    """What netwarden's proxy identified on a connection it relays (the first bytes:
    "tls example.com h2", "http GET host", "ssh"), for the application's flow."""

    client: Endpoint
    destination: Endpoint
    app: str

    @property
    def key(self) -> FlowKey:
        return FlowKey(Transport.TCP, self.client, self.destination)


PROXIED, PROXY_ACCEPTED, PROXY_UPSTREAM = "proxied", "proxy, accepted side", "proxy, upstream side"


def relay_role(note: str) -> str:
    """A flow's part in a relayed connection, in one word ("" when it has none)."""
    for prefix, role in ((PROXIED, "proxied"), (PROXY_ACCEPTED, "proxy-in"),
                         (PROXY_UPSTREAM, "proxy-out")):  # fmt: skip
        if note.startswith(prefix):
            return role
    return ""


class FlowEventKind(enum.StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    CLOSED = "closed"


# Not frozen, though never changed once made: a frozen dataclass takes ~6x as long to
# build, and the monitor builds several per flow.
@dataclass(slots=True)
class FlowEvent:
    kind: FlowEventKind
    flow: Flow

    def to_json(self) -> dict[str, Any]:
        return {"event": str(self.kind), **self.flow.to_json()}
