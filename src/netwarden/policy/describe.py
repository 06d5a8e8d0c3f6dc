"""A rule in a few words, as `policy show` prints what it matches."""

from __future__ import annotations

from netwarden.policy.model import Addresses, PortRange, Protocol, Rule


def _addresses(spec: Addresses) -> str:
    return ",".join([*(str(n) for n in spec.networks), *(f"@{name}" for name in spec.sets)])


def _ports(ranges: tuple[PortRange, ...]) -> str:
    return ",".join(str(r.low) if r.low == r.high else f"{r.low}-{r.high}" for r in ranges)


def matches(rule: Rule) -> str:
    """What the rule matches: 'tcp to 10.0.0.0/8 port 443 user 1000', or 'anything'."""
    parts = [] if rule.protocol is Protocol.ANY else [str(rule.protocol)]
    for word, value in (
        ("from", _addresses(rule.source)),
        ("to", _addresses(rule.destination)),
        ("from port", _ports(rule.source_ports)),
        ("port", _ports(rule.destination_ports)),
        ("interface", rule.interface),
        ("uid", "" if rule.uid is None else str(rule.uid)),
        ("gid", "" if rule.gid is None else str(rule.gid)),
        ("", rule.cgroup.label if rule.cgroup is not None else ""),
        ("", rule.program.describe() if rule.program is not None else ""),
        ("mark", "" if rule.mark is None else f"{rule.mark:#x}"),
    ):
        if value:
            parts.append(f"{word} {value}".strip())
    if rule.target is not None:
        parts.append(f"-> {rule.target}")
    return " ".join(parts) or "anything"
