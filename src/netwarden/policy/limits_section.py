"""The [[quota]] and [[shape]] tables of a policy file:

[[quota]]
name = "video"
exe = ["/usr/bin/vlc"]             # whose traffic: exe, process, user, scope or service
limit = "5 GB"                     # bytes per period
period = "day"                     # day | week (from Monday) | month
direction = "both"                 # both | out (sent) | in (received)
action = "block"                   # block: the next connections are refused | log
timezone = "Europe/Berlin"         # where a day starts; the host's zone when left out

[[shape]]
name = "slow-backup"
process = ["rsync"]                # exe, process, user, scope, service, host
upload = "2 MB/s"                  # the sum of all its connections
download = "10 MB/s"
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from netwarden.policy.limits_model import LimitAction, Period, Quota, Selector, Shape, Way
from netwarden.policy.model import Direction, Protocol
from netwarden.policy.prefixes import Network
from netwarden.policy.quantities import parse_bytes, parse_rate
from netwarden.policy.schedule import parse_zone

if TYPE_CHECKING:
    from netwarden.policy.loader import _Loader

WHO_KEYS = {"exe", "process", "user", "scope", "service"}
QUOTA_KEYS = {"name", "limit", "period", "direction", "action", "timezone"} | WHO_KEYS
SHAPE_KEYS = {"name", "upload", "download", "host"} | WHO_KEYS

Where = Callable[[str], int]
E = TypeVar("E", Period, Way, LimitAction)


class LimitsSection:
    """Reads quotas and shapes with the loader's own readers of programs and owners."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.lines = loader.lines

    def quotas(self, raw: Any) -> tuple[Quota, ...]:
        tables = self._tables(raw, "quota")
        quotas = (self._quota(index, body) for index, body in enumerate(tables))
        return tuple(q for q in quotas if q is not None)

    def shapes(self, raw: Any) -> tuple[Shape, ...]:
        tables = self._tables(raw, "shape")
        shapes = (self._shape(index, body) for index, body in enumerate(tables))
        return tuple(s for s in shapes if s is not None)

    def _tables(self, raw: Any, kind: str) -> list[Any]:
        if not isinstance(raw, list):
            self.loader.problem(self.lines.key("", kind), f"write them as [[{kind}]] tables")
            return []
        return raw

    def _start(self, kind: str, index: int, raw: Any, known: set[str]) -> tuple[int, Where] | None:
        header = self.lines.header(kind, index)

        def at(key: str) -> int:
            return self.lines.key(kind, key, index) or header

        if not isinstance(raw, dict):
            self.loader.problem(header, f"a [[{kind}]] must be a table")
            return None
        for key in raw:
            if key not in known:
                self.loader.problem(at(key), f"unknown key {key!r} in [[{kind}]]")
        return header, at

    def _name(self, raw: dict[str, Any], kind: str, index: int, at: Where) -> str:
        name = raw.get("name", f"{kind}-{index + 1}")
        if not isinstance(name, str) or not name:
            self.loader.problem(at("name"), "name must be a non-empty string")
            return f"{kind}-{index + 1}"
        return name

    def _who(
        self, raw: dict[str, Any], at: Where, header: int, hosts: tuple[Network, ...]
    ) -> Selector:
        loader = self.loader
        program = loader._program(raw, at, Direction.OUT, Protocol.ANY)
        uid, _gid, cgroup = loader._owner(raw, at, Direction.OUT)
        who = Selector(program, uid, cgroup, hosts)
        if who == Selector():
            loader.problem(header, "say whose traffic: exe, process, user, scope or service")
        return who

    def _quota(self, index: int, raw: Any) -> Quota | None:
        started = self._start("quota", index, raw, QUOTA_KEYS)
        if started is None:
            return None
        header, at = started
        before = len(self.loader.problems)
        name = self._name(raw, "quota", index, at)
        who = self._who(raw, at, header, ())
        limit = 0
        try:
            limit = parse_bytes(raw.get("limit"))
            if limit <= 0:
                raise ValueError("a quota of 0 bytes would block everything at once")
        except ValueError as exc:
            self.loader.problem(at("limit"), f"limit: {exc}")
        period = self._choice(raw, "period", Period, Period.DAY, at)
        way = self._choice(raw, "direction", Way, Way.BOTH, at)
        action = self._choice(raw, "action", LimitAction, LimitAction.BLOCK, at)
        zone = str(raw.get("timezone", ""))
        if zone:
            try:
                parse_zone(zone)
            except ValueError as exc:
                self.loader.problem(at("timezone"), f"timezone: {exc}")
        if len(self.loader.problems) > before:
            return None
        return Quota(name, header, who, limit, period, way, action, zone)

    def _shape(self, index: int, raw: Any) -> Shape | None:
        started = self._start("shape", index, raw, SHAPE_KEYS)
        if started is None:
            return None
        header, at = started
        before = len(self.loader.problems)
        name = self._name(raw, "shape", index, at)
        who = self._who(raw, at, header, self._hosts(raw.get("host", []), at("host")))
        rates: dict[str, int | None] = {}
        for key in ("upload", "download"):
            if key not in raw:
                rates[key] = None
                continue
            try:
                rates[key] = parse_rate(raw[key])
                if not rates[key]:
                    raise ValueError("a rate of 0 would stop it altogether (use a block rule)")
            except ValueError as exc:
                self.loader.problem(at(key), f"{key}: {exc}")
        if not any(key in raw for key in ("upload", "download")):
            self.loader.problem(header, "a [[shape]] limits upload, download or both")
        if len(self.loader.problems) > before:
            return None
        return Shape(name, header, who, rates["upload"], rates["download"])

    def _hosts(self, raw: Any, line: int) -> tuple[Network, ...]:
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list):
            self.loader.problem(line, "host is an address or network, or a list of them")
            return ()
        hosts = []
        for value in values:
            try:
                hosts.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                self.loader.problem(line, f"host {value!r} is not an address or network")
        return tuple(hosts)

    def _choice(self, raw: dict[str, Any], key: str, kind: type[E], default: E, at: Where) -> E:
        if key not in raw:
            return default
        try:
            return kind(raw[key])
        except ValueError:
            known = ", ".join(member.value for member in kind)
            self.loader.problem(at(key), f"{key} must be one of {known}, not {raw[key]!r}")
            return default
