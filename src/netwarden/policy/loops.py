"""Redirect loops through several local proxies, found in the policy before they spin.

Each proxy gives its own upstream connections a mark (netwarden's proxy `proxy_mark`,
others the `target_mark` their [[redirect]] declares). A redirect rule that matches the
mark of a proxy's connections sends them on to another proxy: the marks form a graph,
and a cycle reachable from the applications' unmarked connections is a loop. A cycle
is reported only when it surely loops: its rules name no owner (a proxy runs as its own
user), their ports overlap and their destinations are the same or any - a proxy keeps
the destination, so rules that cannot all meet one connection cannot loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from netwarden.policy.model import Direction, Rule


def redirect_loops(redirects: Sequence[Rule], proxy_mark: int) -> list[tuple[int, str]]:
    """(line, message) for each loop, at the line of the rule that closes it."""
    rules = [r for r in redirects if r.direction is Direction.OUT and _may_take_proxies(r)]
    found: list[tuple[int, str]] = []
    reported: set[frozenset[int]] = set()

    def visit(mark: int, path: list[Rule]) -> None:
        for rule in rules:
            if not _matches(rule, mark, proxy_mark) or rule.target is None:
                continue
            if rule in path:
                cycle = path[path.index(rule) :]
                key = frozenset(r.index for r in cycle)
                if key not in reported and _can_meet_one_connection(cycle):
                    reported.add(key)
                    found.append((rule.line, _describe(cycle)))
                continue
            if rule.target.mark is not None:
                visit(rule.target.mark, [*path, rule])

    visit(0, [])
    return found


def _may_take_proxies(rule: Rule) -> bool:
    return rule.uid is None and rule.gid is None and rule.cgroup is None


def _matches(rule: Rule, mark: int, proxy_mark: int) -> bool:
    if mark == proxy_mark and mark != 0:
        return False  # the guard at the top of every redirect chain
    return rule.mark is None or rule.mark == mark


def _can_meet_one_connection(cycle: list[Rule]) -> bool:
    ports = [(0, 65535)]  # what every rule so far takes
    for rule in cycle:
        if rule.destination_ports:
            overlaps = ((max(low, r.low), min(high, r.high))
                        for low, high in ports for r in rule.destination_ports)  # fmt: skip
            ports = [(low, high) for low, high in overlaps if low <= high]
    destinations = {r.destination for r in cycle if not r.destination.any}
    return bool(ports) and len(destinations) <= 1


def _describe(cycle: list[Rule]) -> str:
    steps = []
    for rule in cycle:
        target = rule.target
        assert target is not None
        assert target.mark is not None
        steps.append(f"{rule.name!r} sends connections to {target}, whose own connections "
                     f"carry mark {target.mark:#x}")  # fmt: skip
    return (
        "these redirects loop: " + "; ".join(steps) + f"; and {cycle[0].name!r} takes "
        "those again. Give a proxy a mark that no redirect rule takes (as proxy_mark)"
    )
