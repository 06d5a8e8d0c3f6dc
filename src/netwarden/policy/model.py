"""A validated policy: frozen values, no I/O."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netwarden.policy.inspect_model import InspectPolicy
from netwarden.policy.prefixes import Network, PrefixTable
from netwarden.policy.schedule import Schedule

if TYPE_CHECKING:
    from netwarden.policy.limits_model import Quota, Shape


class Action(enum.StrEnum):
    ALLOW = "allow"
    BLOCK = "block"  # drop silently
    REJECT = "reject"  # refuse: TCP reset or ICMP unreachable
    LOG = "log"  # log and go on to the next rule
    REDIRECT = "redirect"  # send the connection to a local listener ([[redirect]] only)
    ASK = "ask"  # hold a new connection while a person decides (`netwarden up`)

    @property
    def terminal(self) -> bool:
        return self is not Action.LOG


class Direction(enum.StrEnum):
    OUT = "out"  # sent by this host
    IN = "in"  # addressed to this host
    FORWARD = "forward"  # routed through this host


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class PortRange:
    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class AddressSet:
    """A named set of networks, from the policy file or a file of its own."""

    name: str
    v4: PrefixTable
    v6: PrefixTable

    @classmethod
    def of(cls, name: str, networks: Iterable[Network]) -> AddressSet:
        networks = list(networks)
        return cls(name, PrefixTable.of(4, networks), PrefixTable.of(6, networks))

    def of_version(self, version: int) -> PrefixTable:
        return self.v4 if version == 4 else self.v6

    def __contains__(self, address: object) -> bool:
        return address in self.v4 or address in self.v6

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)


@dataclass(frozen=True, slots=True)
class Addresses:
    """Networks written in a rule plus named sets it refers to; empty means any."""

    networks: tuple[Network, ...] = ()
    sets: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return not self.networks and not self.sets


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    """Sockets created in a cgroup (a netwarden scope or a systemd service).

    `path` is relative to the cgroup v2 root; `level` is its depth there.
    """

    label: str  # what the user wrote: scope NAME or the unit name
    path: str
    scope: str = ""  # set for netwarden scopes

    @property
    def level(self) -> int:
        return len([p for p in self.path.split("/") if p])

    def mark(self, base: int) -> int:
        """The mark its sockets carry: the lower half of `base` names the cgroup, scopes
        below 0x8000 and services above."""
        kind = 0 if self.scope else 0x8000
        name = f"scope:{self.scope}" if self.scope else f"service:{self.label}"
        return base | kind | (zlib.crc32(name.encode()) & 0x7FFF)


@dataclass(frozen=True, slots=True)
class RedirectTarget:
    """Where a redirect rule sends connections: netwarden's proxy, or ADDRESS:PORT."""

    port: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None  # None: the proxy
    tproxy: bool = False  # connections handed over by TPROXY, not by NAT
    mark: int | None = None  # the mark of the listener's own connections, when known

    def __str__(self) -> str:
        if self.address is None:
            return f"proxy (port {self.port})"
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProgramMatch:
    """The program behind a connection, as a rule names it. Each given field must
    match (any of its values); decided at the CONNECT layer by `netwarden up`."""

    exe: tuple[str, ...] = ()  # executable paths; * ? [ ] as in shell globs
    process: tuple[str, ...] = ()  # process names (as ps shows them)
    sha256: tuple[str, ...] = ()  # of the executable, lower-case hex
    parent_exe: tuple[str, ...] = ()  # the parent process's executable, globs
    cmdline: str = ""  # a regular expression searched in the command line

    def describe(self) -> str:
        parts = [
            f"{key}={' or '.join(values)}"
            for key, values in (
                ("exe", self.exe),
                ("process", self.process),
                ("sha256", self.sha256),
                ("parent_exe", self.parent_exe),
            )
            if values
        ]
        if self.cmdline:
            parts.append(f"cmdline~{self.cmdline}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    name: str
    action: Action
    direction: Direction
    protocol: Protocol = Protocol.ANY
    source: Addresses = field(default_factory=Addresses)
    destination: Addresses = field(default_factory=Addresses)
    source_ports: tuple[PortRange, ...] = ()
    destination_ports: tuple[PortRange, ...] = ()
    interface: str = ""
    uid: int | None = None
    gid: int | None = None
    cgroup: CgroupMatch | None = None
    line: int = 0
    target: RedirectTarget | None = None  # redirect rules only
    mark: int | None = None  # redirect rules only: the socket mark a connection must carry
    program: ProgramMatch | None = None  # decided per connection by `netwarden up`
    when: Schedule | None = None  # in force only then (`netwarden up` follows the clock)

    @property
    def at_connect(self) -> bool:
        """Decided per connection by `netwarden up` (it names a program, or asks)."""
        return self.program is not None or self.action is Action.ASK


@dataclass(frozen=True, slots=True)
class Settings:
    table: str = "netwarden"
    priority: int = 0  # nft filter hook priority of netwarden's chains
    proxy_port: int = 15001  # where `to = "proxy"` sends connections
    proxy_mark: int = 0x4E500001  # sockets with this mark are never redirected
    mark_base: int = 0x4E570000  # scope and service marks: this | 16 bits per cgroup
    socks5: tuple[tuple[str, int], ...] = ()  # `netwarden up` runs SOCKS5 listeners here
    http_proxy: tuple[tuple[str, int], ...] = ()  # ... and HTTP proxy listeners here
    connect_queue: int = 20055  # NFQUEUE number of the CONNECT layer
    connect_mask: int = 0xB0000000  # mark bits carrying CONNECT verdicts
    fail_mode: str = "open"  # a failing callout, or no daemon: open permits, closed blocks


@dataclass(frozen=True, slots=True)
class AskSettings:
    """[ask]: how a rule with action = "ask" waits for its answer."""

    timeout: float = 30.0  # seconds a held connection waits for an answer
    default: Action = Action.BLOCK  # what happens then: allow or block
    answers: str = ""  # the rules file "always" answers go to ("": beside the policy)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    defaults: dict[Direction, Action]
    sets: dict[str, AddressSet]
    settings: Settings = field(default_factory=Settings)
    source: str = ""  # the file it came from
    redirects: tuple[Rule, ...] = ()  # tried before the filters, for new TCP connections
    inspect: InspectPolicy = field(default_factory=InspectPolicy)
    quotas: tuple[Quota, ...] = ()
    shapes: tuple[Shape, ...] = ()

    ask: AskSettings = field(default_factory=AskSettings)
    answers: int = 0  # how many of the rules, first, came from the answers file

    @property
    def program_rules(self) -> tuple[Rule, ...]:
        """The rules decided when a connection starts (by program, or asking)."""
        return tuple(rule for rule in self.rules if rule.at_connect)

    @property
    def scheduled(self) -> tuple[Rule, ...]:
        """Rules in force only at some times."""
        return tuple(rule for rule in self.rules if rule.when is not None)

    def in_force(self, at: float) -> Policy:
        """This policy with only the rules whose time window holds at `at`."""
        if not self.scheduled:
            return self
        rules = tuple(r for r in self.rules if r.when is None or r.when.active(at))
        return dataclasses.replace(self, rules=rules)

    def next_change(self, after: float) -> float | None:
        """When a rule's time window next opens or closes (None: not within a week)."""
        changes = [r.when.next_change(after) for r in self.rules if r.when is not None]
        return min((c for c in changes if c is not None), default=None)
