"""Policy -> backend-neutral rules: split by address family, sets resolved per family.

A backend (nftables on Linux) renders these one to one; golden tests pin the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from netwarden.policy.connect_layer import ConnectLayer
from netwarden.policy.model import (
    Action,
    Addresses,
    CgroupMatch,
    Direction,
    Policy,
    PortRange,
    Protocol,
    Rule,
)
from netwarden.policy.prefixes import Network, PrefixTable

FAMILIES: tuple[int, ...] = (4, 6)


HASHED_SET_MIN = 4096  # sets this large are matched by one hash lookup per prefix length


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """Either a named set (per family) or networks written inline.

    A large set is looked up per prefix length (`lengths`): hash sets load many times
    faster into the kernel than interval trees and match in constant time.
    """

    set_name: str = ""
    networks: tuple[Network, ...] = ()
    lengths: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    family: int | None  # 4, 6, or None when the rule does not depend on it
    protocols: tuple[str, ...]  # () for any; icmp means icmp or ipv6-icmp by family
    source: AddressMatch | None
    destination: AddressMatch | None
    source_ports: tuple[PortRange, ...]
    destination_ports: tuple[PortRange, ...]
    interface: str
    uid: int | None
    gid: int | None
    cgroup: CgroupMatch | None
    cgroup_mark: int | None  # the mark the cgroup's sockets carry
    action: Action
    counter: str


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    table: str
    priority: int
    defaults: dict[Direction, Action]
    sets: dict[tuple[str, int], PrefixTable]  # (set name, family) -> disjoint networks
    chains: dict[Direction, tuple[CompiledRule, ...]]
    counters: tuple[str, ...]
    redirects: dict[Direction, tuple[CompiledRule, ...]]  # out and forward
    proxy_mark: int
    cgroup_marks: tuple[tuple[CgroupMatch, int], ...] = ()  # scopes and services, marked
    tproxy: bool = False  # some redirect uses TPROXY (it needs policy routing)
    connect: ConnectLayer | None = None  # first packets decided by callouts


def counter_name(rule: Rule) -> str:
    return f"rule_{rule.index:04d}"


def default_counter(direction: Direction) -> str:
    return f"default_{direction.value}"


def compile_policy(policy: Policy, connect: ConnectLayer | None = None) -> CompiledPolicy:
    """connect: the CONNECT layer the daemon runs, when it does."""
    sets: dict[tuple[str, int], PrefixTable] = {}
    for name, address_set in policy.sets.items():
        for version in FAMILIES:
            networks = address_set.of_version(version).without_covered()
            if networks:
                sets[(name, version)] = networks
    chains: dict[Direction, list[CompiledRule]] = {d: [] for d in Direction}
    for rule in policy.rules:
        if rule.at_connect:  # decided at the CONNECT layer, not in the kernel
            continue
        for family in _families(rule, policy):
            compiled = _compile(rule, family, policy, sets)
            if compiled is not None:
                chains[rule.direction].append(compiled)
    redirects: dict[Direction, list[CompiledRule]] = {Direction.OUT: [], Direction.FORWARD: []}
    for rule in policy.redirects:
        target = rule.target
        for family in _families(rule, policy):
            if target is not None and target.address is not None:
                if family not in (None, target.address.version):
                    continue
                family = target.address.version  # a listener serves one address family
            compiled = _compile(rule, family, policy, sets)
            if compiled is not None:
                redirects[rule.direction].append(compiled)
    kernel_rules = [r for r in (*policy.rules, *policy.redirects) if not r.at_connect]
    counters = tuple(counter_name(r) for r in kernel_rules) + tuple(
        default_counter(d) for d in Direction
    )
    return CompiledPolicy(
        table=policy.settings.table,
        priority=policy.settings.priority,
        defaults=dict(policy.defaults),
        sets=sets,
        chains={d: tuple(rules) for d, rules in chains.items()},
        counters=counters,
        redirects={d: tuple(rules) for d, rules in redirects.items()},
        proxy_mark=policy.settings.proxy_mark,
        cgroup_marks=tuple(
            (rule.cgroup, rule.cgroup.mark(policy.settings.mark_base))
            for rule in (*policy.rules, *policy.redirects)
            if rule.cgroup is not None
        ),
        tproxy=any(r.target is not None and r.target.tproxy for r in policy.redirects),
        connect=connect,
    )


def _side_families(addresses: Addresses, policy: Policy) -> set[int] | None:
    """Families an address side can match; None when the side matches anything."""
    if addresses.any:
        return None
    families: set[int] = {n.version for n in addresses.networks}
    for name in addresses.sets:
        families.update(v for v in FAMILIES if policy.sets[name].of_version(v))
    return families


def _families(rule: Rule, policy: Policy) -> Sequence[int | None]:
    sides = [f for f in (_side_families(rule.source, policy),
                         _side_families(rule.destination, policy)) if f is not None]  # fmt: skip
    if not sides:
        return [None]
    allowed = set(FAMILIES)
    for side in sides:
        allowed &= side
    return sorted(allowed)  # empty: the rule can never match; it keeps only its counter


def _address_match(
    addresses: Addresses, family: int | None, rule: Rule, side: str,
    sets: dict[tuple[str, int], PrefixTable],
) -> AddressMatch | None:  # fmt: skip
    if addresses.any or family is None:
        return None
    inline = tuple(sorted(PrefixTable.of(family, addresses.networks).without_covered().networks()))
    named = [name for name in addresses.sets if (name, family) in sets]
    if not named:
        return AddressMatch(networks=inline)
    if inline or len(named) > 1:  # one set of their union, made for this rule
        union = PrefixTable.of(family, inline)
        for name in named:
            union.update(sets[(name, family)])
        named = [f"rule_{rule.index:04d}_{side}"]
        sets[(named[0], family)] = union.without_covered()
    return AddressMatch(set_name=named[0], lengths=hashed_lengths(sets[(named[0], family)]))


def hashed_lengths(table: PrefixTable) -> tuple[int, ...]:
    """The prefix lengths a large set is looked up by; () for a small (interval) set."""
    return tuple(sorted(table.by_length)) if len(table) >= HASHED_SET_MIN else ()


def _compile(
    rule: Rule, family: int | None, policy: Policy,
    sets: dict[tuple[str, int], PrefixTable],
) -> CompiledRule | None:  # fmt: skip
    if rule.protocol is Protocol.ANY:
        has_ports = bool(rule.source_ports or rule.destination_ports)
        protocols: tuple[str, ...] = ("tcp", "udp") if has_ports else ()
    else:
        protocols = (rule.protocol.value,)
    return CompiledRule(
        rule=rule, family=family, protocols=protocols,
        source=_address_match(rule.source, family, rule, "from", sets),
        destination=_address_match(rule.destination, family, rule, "to", sets),
        source_ports=rule.source_ports, destination_ports=rule.destination_ports,
        interface=rule.interface, uid=rule.uid, gid=rule.gid, cgroup=rule.cgroup,
        cgroup_mark=rule.cgroup.mark(policy.settings.mark_base) if rule.cgroup else None,
        action=rule.action, counter=counter_name(rule),
    )  # fmt: skip
