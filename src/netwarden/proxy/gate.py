"""The policy as the user-mode proxies ask it: may this user reach ADDRESS:PORT?"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from netwarden.policy.matcher import FlowQuery, decide
from netwarden.policy.model import Action, Direction, Policy

Gate = Callable[[str, int], str | None]  # None when allowed, else the reason


def policy_gate(policy: Policy, uid: int | None = None, gid: int | None = None) -> Gate:
    """Refuses what the policy's outgoing rules block or reject (the source address is
    not known before connecting, so rules on `from` do not apply here)."""

    def gate(address: str, port: int) -> str | None:
        destination = ipaddress.ip_address(address)
        source = ipaddress.ip_address("::" if destination.version == 6 else "0.0.0.0")
        flow = FlowQuery("tcp", Direction.OUT, source, destination, None, port, uid=uid, gid=gid)
        decision = decide(policy, flow)
        if decision.action in (Action.BLOCK, Action.REJECT):
            return f"refused by the policy: {decision.reason}"
        return None

    return gate
