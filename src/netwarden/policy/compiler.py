"""Policy -> backend-neutral rules: split by address family, sets resolved per family.

A backend (nftables on Linux) renders these one to one; golden tests pin the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from netwarden.policy.model import (
    Action,
    Addresses,
    CgroupMatch,
    Direction,
    Network,
    Policy,
    PortRange,
    Protocol,
    Rule,
)

FAMILIES: tuple[int, ...] = (4, 6)
_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """Either a named set (per family) or networks written inline."""

    set_name: str = ""
    networks: tuple[Network, ...] = ()


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
    action: Action
    counter: str


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    table: str
    priority: int
    defaults: dict[Direction, Action]
    sets: dict[tuple[str, int], tuple[Network, ...]]  # (set name, family) -> networks
    chains: dict[Direction, tuple[CompiledRule, ...]]
    counters: tuple[str, ...]
    redirects: dict[Direction, tuple[CompiledRule, ...]]  # out and forward
    proxy_mark: int


def _collapsed(networks: Iterable[Network]) -> tuple[Network, ...]:
    """Overlapping and adjacent networks merged: the kernel refuses overlapping
    intervals in one set. Lists without overlaps (the usual blocklist) are only sorted,
    which is much cheaper than merging."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for network in networks:
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    return (*_merged(v4), *_merged(v6))


def _merged(networks: list[_N]) -> list[_N]:
    bounds = sorted(
        (start := int(n.network_address), start | ((1 << (n.max_prefixlen - n.prefixlen)) - 1), n)
        for n in networks
    )
    last_end = -1
    for start, end, _network in bounds:
        if start <= last_end:
            return list(ipaddress.collapse_addresses(networks))
        last_end = end
    return [network for _start, _end, network in bounds]


def counter_name(rule: Rule) -> str:
    return f"rule_{rule.index:04d}"


def default_counter(direction: Direction) -> str:
    return f"default_{direction.value}"


def compile_policy(policy: Policy) -> CompiledPolicy:
    sets: dict[tuple[str, int], tuple[Network, ...]] = {}
    for name, address_set in policy.sets.items():
        for version in FAMILIES:
            networks = _collapsed(address_set.of_version(version))
            if networks:
                sets[(name, version)] = networks
    chains: dict[Direction, list[CompiledRule]] = {d: [] for d in Direction}
    for rule in policy.rules:
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
    counters = tuple(counter_name(r) for r in (*policy.rules, *policy.redirects)) + tuple(
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
    )


def _side_families(addresses: Addresses, policy: Policy) -> set[int] | None:
    """Families an address side can match; None when the side matches anything."""
    if addresses.any:
        return None
    families: set[int] = {n.version for n in addresses.networks}
    for name in addresses.sets:
        families.update(n.version for n in policy.sets[name].networks)
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
    sets: dict[tuple[str, int], tuple[Network, ...]],
) -> AddressMatch | None:  # fmt: skip
    if addresses.any or family is None:
        return None
    inline = _collapsed(n for n in addresses.networks if n.version == family)
    named = [name for name in addresses.sets if (name, family) in sets]
    if not inline and len(named) == 1:
        return AddressMatch(set_name=named[0])
    if not named:
        return AddressMatch(networks=inline)
    # Inline networks and sets together: one set of their union, made for this rule.
    union = _collapsed(inline + tuple(n for name in named for n in sets[(name, family)]))
    own = f"rule_{rule.index:04d}_{side}"
    sets[(own, family)] = union
    return AddressMatch(set_name=own)


def _compile(
    rule: Rule, family: int | None, policy: Policy,
    sets: dict[tuple[str, int], tuple[Network, ...]],
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
        action=rule.action, counter=counter_name(rule),
    )  # fmt: skip
