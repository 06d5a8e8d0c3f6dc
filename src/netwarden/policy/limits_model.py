"""The policy's limits as values: byte quotas ([[quota]]) and rate limits ([[shape]]),
each for the traffic of a program, user, scope or service (and, for shaping, a host)."""

from __future__ import annotations

import datetime
import enum
import ipaddress
from dataclasses import dataclass

from netwarden.model import Flow
from netwarden.policy.matcher import ProgramFacts, in_cgroup, program_matches
from netwarden.policy.model import CgroupMatch, ProgramMatch
from netwarden.policy.prefixes import Network


class Period(enum.StrEnum):
    DAY = "day"
    WEEK = "week"  # from Monday 00:00
    MONTH = "month"


class Way(enum.StrEnum):
    BOTH = "both"
    OUT = "out"  # what the program sends
    IN = "in"  # what it receives


class LimitAction(enum.StrEnum):
    BLOCK = "block"  # the program's next connections are refused
    LOG = "log"


@dataclass(frozen=True, slots=True)
class Selector:
    """Whose traffic: each given field must match."""

    program: ProgramMatch | None = None
    uid: int | None = None
    cgroup: CgroupMatch | None = None
    hosts: tuple[Network, ...] = ()  # remote addresses (shaping only)

    def describe(self) -> str:
        parts = []
        if self.program is not None:
            parts.append(self.program.describe())
        if self.uid is not None:
            parts.append(f"uid {self.uid}")
        if self.cgroup is not None:
            parts.append(self.cgroup.label)
        if self.hosts:
            parts.append("hosts " + ",".join(str(h) for h in self.hosts))
        return " ".join(parts) or "everything"

    def matches(self, exe: str, name: str, uid: int | None, cgroup: str, remote: str = "") -> bool:
        if self.program is not None and not program_matches(
            self.program, ProgramFacts(name=name, exe=exe)
        ):
            return False
        if self.uid is not None and self.uid != uid:
            return False
        if self.cgroup is not None and not in_cgroup(self.cgroup, cgroup):
            return False
        if self.hosts:
            try:
                address = ipaddress.ip_address(remote)
            except ValueError:
                return False
            return any(address in network for network in self.hosts)
        return True

    def matches_flow(self, flow: Flow) -> bool:
        process = flow.process
        return self.matches(
            process.exe if process else "",
            process.name if process else "",
            flow.uid if flow.uid is not None else (process.uid if process else None),
            flow.cgroup or (process.cgroup if process else ""),
            flow.key.remote.address,
        )


@dataclass(frozen=True, slots=True)
class Quota:
    name: str
    line: int
    who: Selector
    limit: int  # bytes per period
    period: Period = Period.DAY
    way: Way = Way.BOTH
    action: LimitAction = LimitAction.BLOCK
    zone: str = ""  # where periods start at midnight; "": the host's zone

    def period_start(self, at: float) -> float:
        """When the period holding `at` began."""
        import zoneinfo

        zone = zoneinfo.ZoneInfo(self.zone) if self.zone else None
        moment = datetime.datetime.fromtimestamp(at, zone)
        if zone is None:
            moment = moment.astimezone()
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period is Period.WEEK:
            day = day - datetime.timedelta(days=day.weekday())
        elif self.period is Period.MONTH:
            day = day.replace(day=1)
        return day.timestamp()

    def counted(self, sent: int, received: int) -> int:
        if self.way is Way.OUT:
            return sent
        if self.way is Way.IN:
            return received
        return sent + received


@dataclass(frozen=True, slots=True)
class Shape:
    """A rate limit for the sum of the selected traffic (bytes per second; None: not
    limited that way)."""

    name: str
    line: int
    who: Selector
    upload: int | None = None
    download: int | None = None
