"""Compiled policy -> one nftables table, as `nft -j` JSON; counters read back.

Every value placed in the JSON comes from the validated policy (addresses, ports,
names checked by the loader); nothing is ever pasted into nft command text.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import replace
from typing import Any

from netwarden.model import Endpoint
from netwarden.platform.linux.tproxy import TPROXY_MARK
from netwarden.policy.compiler import (
    AddressMatch,
    CompiledPolicy,
    CompiledRule,
    default_counter,
    hashed_lengths,
)
from netwarden.policy.connect_layer import WATCH_BIT, ConnectLayer
from netwarden.policy.model import Action, Direction
from netwarden.policy.prefixes import BITS, Network, PrefixTable, address_text, mask

FAMILY = "inet"
CHAINS = {Direction.OUT: ("out", "output"), Direction.IN: ("in", "input"),
          Direction.FORWARD: ("forward", "forward")}  # fmt: skip
L4 = {4: "ip", 6: "ip6"}
JSON = dict[str, Any]


def render(policy: CompiledPolicy) -> list[JSON]:
    """The table's contents (sets, counters, chains, rules) as nft JSON commands."""
    where = {"family": FAMILY, "table": policy.table}
    commands: list[JSON] = []
    for name in policy.counters:
        commands.append({"add": {"counter": {**where, "name": name}}})
    for (name, family), table in sorted(policy.sets.items()):
        commands += _set_commands(where, name, family, table)
    for direction, (chain, hook) in CHAINS.items():
        default = policy.defaults[direction]
        commands.append({"add": {"chain": {
            **where, "name": chain, "type": "filter", "hook": hook, "prio": policy.priority,
            "policy": "drop" if default is Action.BLOCK else "accept",
        }}})  # fmt: skip
        rule = {**where, "chain": chain}
        if policy.connect is not None and direction is not Direction.FORWARD:
            permitted = _connect_code(policy.connect, CT_MARK, policy.connect.permit_code)
            commands.append(_add_rule(where, chain, [permitted, {"accept": None}], "permitted"))
        # Decisions are made for the first packet of a flow; the rest of an allowed flow
        # and its replies pass, as with WFP's ALE layers.
        commands.append({"add": {"rule": {**rule, "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                       "right": ["established", "related"]}},
            {"accept": None},
        ]}}})  # fmt: skip
        for compiled in policy.chains[direction]:
            for expr in _variants(compiled):
                commands.append({"add": {"rule": {
                    **rule, "comment": compiled.rule.name[:120], "expr": expr,
                }}})  # fmt: skip
        counter: JSON = {"counter": default_counter(direction)}
        tails: list[list[JSON]] = [[counter]]
        if default is Action.REJECT:
            tails = [[TCP_ONLY, counter, TCP_RESET], [counter, {"reject": None}]]
        for tail in tails:
            commands.append({"add": {"rule": {**rule, "comment": f"default {direction}",
                                              "expr": tail}}})  # fmt: skip
    commands += redirect_chains(policy)
    if policy.connect is not None:
        commands += _connect_chains(policy, policy.connect)
        for target in policy.connect.redirects:
            commands += connect_target_commands(policy.table, policy.connect, target)
    return commands


CONNECT_CHAINS = (("connect_out", "output"), ("connect_in", "input"))
# Right after the mangle hooks, where the queue (iptables-nft mangle) gave the verdict.
CONNECT_PRIORITY = -140
CT_MARK, MARK = {"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}


def _add_chain(where: JSON, name: str, kind: str, hook: str, prio: int) -> JSON:
    chain = {**where, "name": name, "type": kind, "hook": hook, "prio": prio}
    return {"add": {"chain": {**chain, "policy": "accept"}}}


def _add_rule(where: JSON, chain: str, expr: list[JSON], comment: str) -> JSON:
    return {"add": {"rule": {**where, "chain": chain, "expr": expr, "comment": comment}}}


def _connect_code(layer: ConnectLayer, key: JSON, code: int) -> JSON:
    """key (CT_MARK or MARK) carries this verdict code."""
    return _match({"&": [key, layer.mask]}, code)


def _connect_chains(policy: CompiledPolicy, layer: ConnectLayer) -> list[JSON]:
    """A verdict code in a packet's mark moves into its connection's conntrack mark and
    leaves the packet; a blocked connection is refused at once. Redirect codes are
    carried out in the nat chain (see redirect_chains)."""
    where = {"family": FAMILY, "table": policy.table}
    commands: list[JSON] = []
    for chain, hook in CONNECT_CHAINS:
        commands.append(_add_chain(where, chain, "filter", hook, CONNECT_PRIORITY))
        # Almost every packet carries no verdict code and belongs to a connection that
        # is not blocked: one rule lets it go (instead of a look at each rule below).
        undecided = [
            _match({"&": [MARK, layer.mask]}, 0),
            {
                "match": {
                    "op": "!=",
                    "left": {"&": [CT_MARK, layer.mask]},
                    "right": layer.block_code,
                }
            },
            {"accept": None},
        ]
        commands.append(_add_rule(where, chain, undecided, "no verdict to carry"))
        if layer.packets:  # a watched connection: the bit goes to its conntrack mark too
            watched = [
                _match({"&": [MARK, WATCH_BIT]}, WATCH_BIT),
                {"mangle": {"key": CT_MARK, "value": {"|": [CT_MARK, WATCH_BIT]}}},
                {"mangle": {"key": MARK, "value": {"&": [MARK, 0xFFFFFFFF & ~WATCH_BIT]}}},
            ]
            commands.append(_add_rule(where, chain, watched, "packets watched"))
        for code in (layer.continue_code, layer.permit_code, layer.block_code):
            commands += _verdict_rules(where, chain, layer, code)
        # Later datagrams of a blocked UDP conversation (a refused TCP connection ends).
        later = [
            _connect_code(layer, CT_MARK, layer.block_code),
            _match({"meta": {"key": "l4proto"}}, "udp"),
            {"drop": None},
        ]
        commands.append(_add_rule(where, chain, later, "blocked"))
    return commands


def _verdict_rules(where: JSON, chain: str, layer: ConnectLayer, code: int) -> list[JSON]:
    keep = 0xFFFFFFFF & ~layer.mask
    expr = [
        _connect_code(layer, MARK, code),
        {"mangle": {"key": CT_MARK, "value": {"|": [{"&": [CT_MARK, keep]}, code]}}},
        {"mangle": {"key": MARK, "value": {"&": [MARK, keep]}}},
    ]
    tails: list[list[JSON]] = [[]]
    if code == layer.block_code:  # refused at once: a reset, or port unreachable
        tails = [[TCP_ONLY, {"counter": None}, TCP_RESET], [{"counter": None}, {"reject": None}]]
    return [_add_rule(where, chain, [*expr, *tail], f"verdict {code:#x}") for tail in tails]


def connect_target_commands(table: str, layer: ConnectLayer, target: Endpoint) -> list[JSON]:
    """The rules that carry out REDIRECT verdicts to one more target, added to the
    live table (replacing the table would drop the packets waiting in the queue)."""
    code = layer.redirect_codes[target]
    where = {"family": FAMILY, "table": table}
    commands: list[JSON] = []
    for chain, _hook in CONNECT_CHAINS:
        commands += _verdict_rules(where, chain, layer, code)
    address = ipaddress.ip_address(target.address)
    redirect = [
        _match({"meta": {"key": "nfproto"}}, "ipv4" if address.version == 4 else "ipv6"),
        TCP_ONLY,
        _connect_code(layer, CT_MARK, code),
        {"match": {"op": "!=", "left": MARK, "right": layer.proxy_mark}},  # the loop guard
        {"counter": None},
        _nat_to(address, target.port),
    ]
    nat_chain, hook = NAT_CHAINS[Direction.OUT]
    # The nat chain is made with the first redirect (adding it again changes nothing).
    made = _add_chain(where, nat_chain, "nat", hook, NAT_PRIORITY)
    return [
        *commands,
        made,
        _add_rule(where, nat_chain, redirect, f"redirected at connect to {target}"),
    ]


NAT_PRIORITY = -100
NAT_CHAINS = {Direction.OUT: ("redirect_out", "output"),
              Direction.FORWARD: ("redirect_forward", "prerouting")}  # fmt: skip


def redirect_chains(policy: CompiledPolicy) -> list[JSON]:
    """nat chains for redirect rules, only when the policy has any. The proxy's own
    connections (its mark) are never redirected: the loop guard."""
    where = {"family": FAMILY, "table": policy.table}
    commands: list[JSON] = []
    for direction, (chain, hook) in NAT_CHAINS.items():
        rules = [r for r in policy.redirects.get(direction, ()) if not _is_tproxy(r)]
        if not rules:
            # (connect_target_commands makes it for the CONNECT layer's first target: a
            # nat chain costs every packet a look at its connection's NAT state)
            continue
        commands.append(_add_chain(where, chain, "nat", hook, NAT_PRIORITY))
        if direction is Direction.OUT:
            guard = [_match({"meta": {"key": "mark"}}, policy.proxy_mark), {"return": None}]
            comment = "the proxy's own connections"
            commands.append({"add": {"rule": {**where, "chain": chain, "expr": guard,
                                              "comment": comment}}})  # fmt: skip
        for compiled in rules:
            for expr in _expressions(compiled):
                commands.append({"add": {"rule": {
                    **where, "chain": chain, "comment": compiled.rule.name[:120], "expr": expr,
                }}})  # fmt: skip
    return commands + _tproxy_chain(policy)


def _nat_to(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> JSON:
    """To a local listener: `redirect` reaches the primary address of the interface
    (127.0.0.1, ::1); any other address takes a dnat."""
    if address in (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")):
        return {"redirect": {"port": port}}
    return {"dnat": {"family": L4[address.version], "addr": str(address), "port": port}}


def _is_tproxy(compiled: CompiledRule) -> bool:
    return compiled.rule.target is not None and compiled.rule.target.tproxy


def _tproxy_chain(policy: CompiledPolicy) -> list[JSON]:
    """A mangle-priority prerouting chain: packets of connections a transparent listener
    already owns, and new ones a tproxy rule chooses, are marked for local delivery.
    This host's own connections reach it through a route chain (see _tproxy_out)."""
    forwarded = [r for r in policy.redirects.get(Direction.FORWARD, ()) if _is_tproxy(r)]
    outgoing = [r for r in policy.redirects.get(Direction.OUT, ()) if _is_tproxy(r)]
    if not forwarded and not outgoing:
        return []
    where = {"family": FAMILY, "table": policy.table, "chain": "tproxy"}
    commands = _mangle_chain(policy, "tproxy", "filter", "prerouting",
                             "connections already handed over",
                             [TCP_ONLY, _match({"socket": {"key": "transparent"}}, 1),
                              _set_mark(TPROXY_MARK), {"accept": None}])  # fmt: skip
    for compiled in forwarded:
        for family, expr in _per_family(compiled):
            expr += [_set_mark(TPROXY_MARK), _tproxy(compiled, family)]
            commands.append({"add": {"rule": {**where, "comment": compiled.rule.name[:120],
                                              "expr": expr}}})  # fmt: skip
    for index, compiled in enumerate(outgoing):
        for family in [compiled.family] if compiled.family else [4, 6]:
            expr = [_match({"meta": {"key": "nfproto"}}, "ipv4" if family == 4 else "ipv6"),
                    TCP_ONLY, _match({"meta": {"key": "iifname"}}, "lo"),
                    _match({"meta": {"key": "mark"}}, TPROXY_MARK + 1 + index),
                    _tproxy(compiled, family)]  # fmt: skip
            commands.append({"add": {"rule": {**where, "comment": compiled.rule.name[:120],
                                              "expr": expr}}})  # fmt: skip
    return commands + _tproxy_out(policy, outgoing)


def _tproxy_out(policy: CompiledPolicy, rules: list[CompiledRule]) -> list[JSON]:
    """This host's own connections chosen by a tproxy rule: every packet gets the rule's
    mark (TPROXY_MARK + 1 + its index) in a route chain, which reroutes it by that mark
    through netwarden's routing rule onto lo, where the prerouting chain hands it to the
    listener. The proxy's own sockets (its mark) are left alone."""
    if not rules:
        return []
    where = {"family": FAMILY, "table": policy.table, "chain": "tproxy_out"}
    commands = _mangle_chain(policy, "tproxy_out", "route", "output",
                             "the proxy's own connections",
                             [_match({"meta": {"key": "mark"}}, policy.proxy_mark),
                              {"return": None}])  # fmt: skip
    for index, compiled in enumerate(rules):
        for _family, expr in _per_family(compiled):
            expr.append(_set_mark(TPROXY_MARK + 1 + index))
            commands.append({"add": {"rule": {**where, "comment": compiled.rule.name[:120],
                                              "expr": expr}}})  # fmt: skip
    return commands


def _mangle_chain(policy: CompiledPolicy, name: str, kind: str, hook: str, comment: str,
                  first: list[JSON]) -> list[JSON]:  # fmt: skip
    """A chain at mangle priority and its first rule."""
    where = {"family": FAMILY, "table": policy.table}
    return [_add_chain(where, name, kind, hook, -150), _add_rule(where, name, first, comment)]


def _per_family(compiled: CompiledRule) -> list[tuple[int, list[JSON]]]:
    """The rule's matches (and counter, without its verdict) once per address family
    it can meet: tproxy statements name the family."""
    found = []
    for family in [compiled.family] if compiled.family else [4, 6]:
        for expr in _expressions(replace(compiled, family=family)):
            expr = expr[:-1]
            if compiled.family is None:
                expr.insert(0, _match({"meta": {"key": "nfproto"}},
                                      "ipv4" if family == 4 else "ipv6"))  # fmt: skip
            found.append((family, expr))
    return found


def _set_mark(value: int) -> JSON:
    return {"mangle": {"key": {"meta": {"key": "mark"}}, "value": value}}


def _tproxy(compiled: CompiledRule, family: int) -> JSON:
    target = compiled.rule.target
    assert target is not None
    return {"tproxy": {"family": L4[family], "port": target.port}}


TCP_ONLY: JSON = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
TCP_RESET: JSON = {"reject": {"type": "tcp reset"}}


def _variants(compiled: CompiledRule) -> list[list[JSON]]:
    """The kernel rules for one compiled rule. A reject that can meet TCP answers it
    with a reset (what a refused connection looks like) and everything else with ICMP
    unreachable: two rules sharing one counter."""
    expressions = _expressions(compiled)
    can_meet_tcp = not compiled.protocols or "tcp" in compiled.protocols
    if compiled.action is not Action.REJECT or compiled.protocols == ("tcp",) or not can_meet_tcp:
        return expressions
    return [*_expressions(replace(compiled, protocols=("tcp",))), *expressions]


def _set_name(name: str, family: int, length: int | None = None) -> str:
    return f"{name}_v{family}" if length is None else f"{name}_v{family}_{length}"


def _set_commands(where: JSON, name: str, family: int, table: PrefixTable) -> list[JSON]:
    """A small set is one interval set; a large one a hash set per prefix length."""
    kind = "ipv4_addr" if family == 4 else "ipv6_addr"
    lengths = hashed_lengths(table)
    if not lengths:
        elements = [_interval(family, first, last) for first, last in table.intervals()]
        return [
            {"add": {"set": {**where, "name": _set_name(name, family), "type": kind,
                             "flags": ["interval"]}}},
            {"add": {"element": {**where, "name": _set_name(name, family), "elem": elements}}},
        ]  # fmt: skip
    commands: list[JSON] = []
    for length in lengths:
        networks = table.by_length[length]
        set_name = _set_name(name, family, length)
        size = 1 << max(len(networks) - 1, 1).bit_length()  # a hash table that never grows
        commands.append({"add": {"set": {**where, "name": set_name, "type": kind,
                                         "size": size}}})  # fmt: skip
        elements = [address_text(family, network) for network in sorted(networks)]
        commands.append({"add": {"element": {**where, "name": set_name, "elem": elements}}})
    return commands


def _interval(family: int, first: int, last: int) -> JSON | str:
    bits = BITS[family]
    span = last - first + 1
    if span & (span - 1) == 0 and first % span == 0:  # exactly one network
        length = bits - (span.bit_length() - 1)
        if length == bits:
            return address_text(family, first)
        return {"prefix": {"addr": address_text(family, first), "len": length}}
    return {"range": [address_text(family, first), address_text(family, last)]}


def _network(network: Network) -> JSON | str:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _match(left: JSON, right: Any) -> JSON:
    return {"match": {"op": "==", "left": left, "right": right}}


def _addresses(match: AddressMatch, family: int, field: str) -> list[JSON]:
    """The match for one address side; a set hashed by prefix length needs one per
    length, each a rule of its own (the networks are disjoint, so at most one fires)."""
    left = {"payload": {"protocol": L4[family], "field": field}}
    if match.lengths:
        return [
            _match(left if length == BITS[family] else
                   {"&": [left, address_text(family, mask(family, length))]},
                   f"@{_set_name(match.set_name, family, length)}")
            for length in match.lengths
        ]  # fmt: skip
    if match.set_name:
        return [_match(left, f"@{_set_name(match.set_name, family)}")]
    if len(match.networks) == 1:
        return [_match(left, _network(match.networks[0]))]
    return [_match(left, {"set": [_network(n) for n in match.networks]})]


def _ports(ranges: tuple[Any, ...], field: str) -> JSON:
    values = [r.low if r.low == r.high else {"range": [r.low, r.high]} for r in ranges]
    right = values[0] if len(values) == 1 else {"set": values}
    return _match({"payload": {"protocol": "th", "field": field}}, right)


def _protocols(compiled: CompiledRule) -> JSON | None:
    names: list[str] = []
    for protocol in compiled.protocols:
        if protocol == "icmp":
            names += {4: ["icmp"], 6: ["ipv6-icmp"]}.get(compiled.family or 0,
                                                        ["icmp", "ipv6-icmp"])  # fmt: skip
        else:
            names.append(protocol)
    if not names:
        return None
    return _match({"meta": {"key": "l4proto"}}, names[0] if len(names) == 1 else {"set": names})


def _expressions(compiled: CompiledRule) -> list[list[JSON]]:
    """The rule's expressions; several lists when an address side needs several
    lookups (a set hashed by prefix length): one kernel rule each."""
    slots: list[list[JSON]] = []  # each slot: its alternatives (usually just one)
    family = compiled.family
    if family is not None and compiled.source is None and compiled.destination is None:
        slots.append([_match({"meta": {"key": "nfproto"}}, "ipv4" if family == 4 else "ipv6")])
    protocols = _protocols(compiled)
    if protocols is not None:
        slots.append([protocols])
    if compiled.source is not None and family is not None:
        slots.append(_addresses(compiled.source, family, "saddr"))
    if compiled.destination is not None and family is not None:
        slots.append(_addresses(compiled.destination, family, "daddr"))
    if compiled.source_ports:
        slots.append([_ports(compiled.source_ports, "sport")])
    if compiled.destination_ports:
        slots.append([_ports(compiled.destination_ports, "dport")])
    if compiled.interface:
        key = "oifname" if compiled.rule.direction is Direction.OUT else "iifname"
        slots.append([_match({"meta": {"key": key}}, compiled.interface)])
    if compiled.uid is not None:
        slots.append([_match({"meta": {"key": "skuid"}}, compiled.uid)])
    if compiled.gid is not None:
        slots.append([_match({"meta": {"key": "skgid"}}, compiled.gid)])
    if compiled.rule.mark is not None:
        slots.append([_match({"meta": {"key": "mark"}}, compiled.rule.mark)])
    if compiled.cgroup_mark is not None:  # set on the cgroup's sockets, see cgroup_marks
        slots.append([_match({"meta": {"key": "mark"}}, compiled.cgroup_mark)])
    slots.append([{"counter": compiled.counter}])
    slots.append([_verdict(compiled)])
    return [list(choice) for choice in itertools.product(*slots)]


def _verdict(compiled: CompiledRule) -> JSON:
    match compiled.action:
        case Action.ALLOW:
            return {"accept": None}
        case Action.BLOCK:
            return {"drop": None}
        case Action.REJECT:
            if compiled.protocols == ("tcp",):
                return {"reject": {"type": "tcp reset"}}
            return {"reject": None}
        case Action.LOG:
            return {"log": {"prefix": f"netwarden {compiled.rule.name[:40]}: "}}
        case Action.REDIRECT:
            target = compiled.rule.target
            assert target is not None
            # A forwarded connection is redirected on arrival to the receiving
            # interface's own address: the listener must accept there (0.0.0.0:PORT).
            if target.address is None or compiled.rule.direction is Direction.FORWARD:
                return {"redirect": {"port": target.port}}
            return _nat_to(target.address, target.port)
        case Action.ASK:
            raise ValueError("ask rules are decided at the CONNECT layer, not by the kernel")


def read_counters(table_listing: list[JSON]) -> dict[str, tuple[int, int]]:
    """Named counters of a `nft -j list table` result: name -> (packets, bytes)."""
    counters = {}
    for item in table_listing:
        counter = item.get("counter")
        if isinstance(counter, dict) and "name" in counter:
            counters[str(counter["name"])] = (int(counter.get("packets", 0)),
                                              int(counter.get("bytes", 0)))  # fmt: skip
    return counters
