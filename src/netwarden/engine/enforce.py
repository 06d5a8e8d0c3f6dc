"""Putting a policy in force: compiled once here, applied by the backend's firewall."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netwarden.engine import applied, host
from netwarden.policy.compiler import CompiledPolicy, compile_policy
from netwarden.policy.connect_layer import ConnectLayer

if TYPE_CHECKING:
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
