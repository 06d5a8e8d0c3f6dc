"""The pure matcher: what a policy does to one flow, and why. The kernel rules
compiled from the same policy must agree with it (a property test checks)."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from netwarden.model.flow import IPAddress, parse_host_port
from netwarden.policy.environment import Environment
from netwarden.policy.model import (
    Action,
    Addresses,
    CgroupMatch,
    Direction,
    Policy,
    PortRange,
    ProgramMatch,
    Rule,
)


@dataclass(frozen=True, slots=True)
class FlowQuery:
    """The first packet of a flow, as a rule sees it."""

    protocol: str  # tcp, udp, icmp
    direction: Direction
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address
    source_port: int | None = None
    destination_port: int | None = None
    interface: str = ""
    uid: int | None = None
    gid: int | None = None
    cgroup: str = ""  # the sending socket's cgroup path under the cgroup v2 root
    mark: int = 0  # the sending socket's mark (a proxy's upstream connections carry one)
    program: ProgramFacts | None = None  # the local process, where it is known


@dataclass(frozen=True, slots=True)
class ProgramFacts:
    """The local process of a flow, as program rules look at it."""

    name: str = ""
    exe: str = ""
    cmdline: str = ""
    parent_exe: str = ""
    sha256: Callable[[], str] = lambda: ""  # of the executable, read when a rule asks


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    rule: Rule | None  # None: the default for the direction decided
    logged: tuple[Rule, ...]
    reason: str
    redirect: Rule | None = None  # the redirect rule that sent the flow elsewhere first


def redirect_for(policy: Policy, flow: FlowQuery) -> Rule | None:
    """The first redirect rule that takes this flow (new TCP connections, out or forward)."""
    if flow.protocol != "tcp" or flow.direction is Direction.IN:
        return None
    if flow.mark == policy.settings.proxy_mark and flow.direction is Direction.OUT:
        return None  # the loop guard: the proxy's own connections are never redirected
    return next((r for r in policy.redirects if matches(r, flow, policy)), None)


def decide(policy: Policy, flow: FlowQuery) -> Decision:
    """What happens to a flow: rules that name a program decide first (at the CONNECT
    layer, when the connection starts); then a redirect (nat, before the filters)
    rewrites where it goes, and the other rules decide about the rewritten flow."""
    by_program = decide_by_program(policy, flow)
    if by_program.rule is not None:
        return by_program
    logged = by_program.logged
    redirect = redirect_for(policy, flow)
    if redirect is not None and redirect.target is not None:
        target = redirect.target
        loopback = ipaddress.ip_address("::1" if flow.destination.version == 6 else "127.0.0.1")
        flow = replace(
            flow,
            destination=target.address if target.address is not None else loopback,
            destination_port=target.port,
            direction=Direction.IN if flow.direction is Direction.FORWARD else flow.direction,
        )
        decision = _filter(policy, flow)
        return replace(decision, redirect=redirect, logged=logged + decision.logged)
    decision = _filter(policy, flow)
    return replace(decision, logged=logged + decision.logged)


def decide_by_program(policy: Policy, flow: FlowQuery) -> Decision:
    """The first rule naming a program that matches (rule None: none does; those
    that only log are in `logged` either way)."""
    logged: list[Rule] = []
    if flow.protocol not in ("tcp", "udp") or flow.direction is Direction.FORWARD:
        return Decision(Action.ALLOW, None, (), "")
    for rule in policy.program_rules:
        if not matches(rule, flow, policy):
            continue
        if not rule.action.terminal:
            logged.append(rule)
            continue
        what = f"matches {rule.program.describe()}" if rule.program is not None else "asks"
        return Decision(
            rule.action,
            rule,
            tuple(logged),
            f"rule {rule.name!r} ({policy.source}:{rule.line}) {what} when the connection starts",
        )
    return Decision(Action.ALLOW, None, tuple(logged), "")


def _filter(policy: Policy, flow: FlowQuery) -> Decision:
    logged: list[Rule] = []
    for rule in policy.rules:
        if rule.at_connect:
            continue
        if not matches(rule, flow, policy):
            continue
        if not rule.action.terminal:
            logged.append(rule)
            continue
        return Decision(rule.action, rule, tuple(logged),
                        f"rule {rule.name!r} ({policy.source}:{rule.line}) matches")  # fmt: skip
    action = policy.defaults[flow.direction]
    return Decision(action, None, tuple(logged),
                    f"no rule matches; the default for {flow.direction} is {action}")  # fmt: skip


def matches(rule: Rule, flow: FlowQuery, policy: Policy) -> bool:
    if rule.direction is not flow.direction:
        return False
    has_ports = bool(rule.source_ports or rule.destination_ports)
    if rule.protocol.value not in ("any", flow.protocol):
        return False
    if has_ports and flow.protocol not in ("tcp", "udp"):
        return False
    if not _in_addresses(flow.source, rule.source, policy):
        return False
    if not _in_addresses(flow.destination, rule.destination, policy):
        return False
    if rule.source_ports and not _in_ports(flow.source_port, rule.source_ports):
        return False
    if rule.destination_ports and not _in_ports(flow.destination_port, rule.destination_ports):
        return False
    if rule.interface and rule.interface != flow.interface:
        return False
    if rule.uid is not None and rule.uid != flow.uid:
        return False
    if rule.gid is not None and rule.gid != flow.gid:
        return False
    if rule.mark is not None and rule.mark != flow.mark:
        return False
    if rule.cgroup is not None and not in_cgroup(rule.cgroup, flow.cgroup):
        return False
    return rule.program is None or (
        flow.program is not None and program_matches(rule.program, flow.program)
    )


def in_cgroup(match: CgroupMatch, cgroup: str) -> bool:
    """Whether a socket's cgroup is the matched one or below it."""
    path, own = match.path.strip("/"), cgroup.strip("/")
    return own == path or own.startswith(path + "/")


def program_matches(match: ProgramMatch, facts: ProgramFacts) -> bool:
    if match.exe and not any(fnmatch.fnmatchcase(facts.exe, p) for p in match.exe):
        return False
    if match.process and facts.name not in match.process:
        return False
    if match.parent_exe and not any(
        fnmatch.fnmatchcase(facts.parent_exe, p) for p in match.parent_exe
    ):
        return False
    if match.cmdline and _pattern(match.cmdline).search(facts.cmdline) is None:
        return False
    return not match.sha256 or facts.sha256() in match.sha256


@functools.lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _in_addresses(address: ipaddress.IPv4Address | ipaddress.IPv6Address, spec: Addresses,
                  policy: Policy) -> bool:  # fmt: skip
    if spec.any:
        return True
    if any(address in network for network in spec.networks):
        return True
    return any(address in policy.sets[name] for name in spec.sets)


def _in_ports(port: int | None, ranges: tuple[PortRange, ...]) -> bool:
    return port is not None and any(port in r for r in ranges)


class FlowSyntaxError(ValueError):
    pass


def parse_flow(text: str, environment: Environment) -> FlowQuery:
    """'tcp out 10.0.0.5:40000 -> 192.0.2.7:443 uid=1000' (also gid=, user=, group=,
    scope=, service=, iface=); IPv6 as [fd00::1]:443; icmp without ports."""
    words = text.split()
    if len(words) < 5 or words[3] != "->":
        raise FlowSyntaxError(
            "a flow reads: PROTOCOL DIRECTION SOURCE -> DESTINATION [uid=N ...], "
            "e.g. 'tcp out 10.0.0.5:40000 -> 192.0.2.7:443 uid=1000'"
        )
    protocol, direction_text, source_text, _arrow, destination_text, *extra = words
    if protocol not in ("tcp", "udp", "icmp"):
        raise FlowSyntaxError(f"protocol must be tcp, udp or icmp, not {protocol!r}")
    try:
        direction = Direction(direction_text)
    except ValueError:
        message = f"direction must be out, in or forward, not {direction_text!r}"
        raise FlowSyntaxError(message) from None
    source, source_port = _endpoint(source_text, protocol)
    destination, destination_port = _endpoint(destination_text, protocol)
    if source.version != destination.version:
        raise FlowSyntaxError("source and destination must both be IPv4 or both IPv6")
    fields: dict[str, str] = {}
    for word in extra:
        key, sep, value = word.partition("=")
        if not sep or key not in (
            "uid", "gid", "user", "group", "scope", "service", "iface", "mark", *PROGRAM_DETAILS
        ):  # fmt: skip
            raise FlowSyntaxError(
                f"unknown flow detail {word!r}: use uid=, gid=, user=, "
                "group=, scope=, service=, iface=, exe=, process=, "
                "parent_exe=, sha256=, cmdline="
            )
        fields[key] = value
    uid = _identity(fields, "uid", "user", environment.uid_of)
    gid = _identity(fields, "gid", "group", environment.gid_of)
    cgroup = ""
    if "scope" in fields:
        cgroup = environment.scope_cgroup(fields["scope"])
    if "service" in fields:
        found = environment.service_cgroup(fields["service"])
        if found is None:
            raise FlowSyntaxError(f"service {fields['service']!r} has no cgroup here")
        cgroup = found
    try:
        mark = int(fields.get("mark", "0"), 0)
    except ValueError:
        raise FlowSyntaxError("mark must be a number, e.g. mark=0x4e500001") from None
    program = None
    if any(key in fields for key in PROGRAM_DETAILS):
        digest = fields.get("sha256", "").lower()
        program = ProgramFacts(
            name=fields.get("process", ""),
            exe=fields.get("exe", ""),
            cmdline=fields.get("cmdline", ""),
            parent_exe=fields.get("parent_exe", ""),
            sha256=lambda: digest,
        )
    return FlowQuery(
        protocol,
        direction,
        source,
        destination,
        source_port,
        destination_port,
        fields.get("iface", ""),
        uid,
        gid,
        cgroup,
        mark,
        program,
    )


PROGRAM_DETAILS = ("exe", "process", "parent_exe", "sha256", "cmdline")


def _endpoint(text: str, protocol: str) -> tuple[IPAddress, int | None]:
    try:
        address, port = parse_host_port(text)
    except ValueError as exc:
        raise FlowSyntaxError(str(exc)) from None
    if protocol in ("tcp", "udp") and port is None:
        raise FlowSyntaxError(f"{text!r} needs a port from 1 to 65535 for {protocol}")
    return address, port


def _identity(
    fields: dict[str, str], number_key: str, name_key: str, lookup: Callable[[str], int | None]
) -> int | None:
    if number_key in fields:
        if not fields[number_key].isdigit():
            raise FlowSyntaxError(f"{number_key} must be a number")
        return int(fields[number_key])
    if name_key in fields:
        found = lookup(fields[name_key])
        if found is None:
            raise FlowSyntaxError(f"unknown {name_key} {fields[name_key]!r}")
        return int(found)
    return None
