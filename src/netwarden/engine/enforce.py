"""Putting a policy in force: compiled once here, applied by the backend's firewall."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from netwarden.engine import applied, host
from netwarden.policy.compiler import CompiledPolicy, compile_policy
from netwarden.policy.connect_layer import ConnectLayer

if TYPE_CHECKING:
    from netwarden.model import Endpoint
    from netwarden.platform.base import Firewall
    from netwarden.policy.model import Policy


def apply_policy(
    policy: Policy,
    firewall: Firewall | None = None,
    connect: ConnectLayer | None = None,
    by: str = "netwarden policy apply",
) -> tuple[CompiledPolicy, int]:
    """Replace the live policy atomically: (what was applied, number of kernel rules).
    A policy the kernel refuses changes nothing (PlatformError). connect: the CONNECT
    layer the daemon runs with it; by: who applied it (for `policy show`)."""
    compiled = compile_policy(policy, connect)
    rules = (firewall or host.firewall()).apply(compiled)
    applied.record(policy, by)
    return compiled, rules


def remove_policy(table: str, firewall: Firewall | None = None) -> bool:
    """Remove netwarden's policy table (nothing else); True when there was one."""
    removed = (firewall or host.firewall()).remove(table)
    applied.forget(table)
    return removed


class LiveConnectLayer:
    """The CONNECT layer as the kernel has it while the daemon runs. Callouts'
    redirects add targets to it; every later application of the policy (a time
    window's, the control API's) puts them in force again with the rest. One change
    at a time."""

    def __init__(self, layer: ConnectLayer | None, firewall: Firewall) -> None:
        self.layer = layer
        self.firewall = firewall
        self._changing = threading.Lock()

    def apply(self, policy: Policy, by: str) -> tuple[CompiledPolicy, int]:
        """apply_policy with the layer as it is now."""
        with self._changing:
            return apply_policy(policy, self.firewall, self.layer, by=by)

    def add_redirect(self, table: str, layer: ConnectLayer, target: Endpoint) -> None:
        """layer (the current one with target added) in force: target's rule added to
        the live table. PlatformError when the kernel refuses it (nothing changes)."""
        with self._changing:
            self.firewall.add_connect_target(table, layer, target)
            self.layer = layer
